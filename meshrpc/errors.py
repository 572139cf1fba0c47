"""The meshrpc exception tree and remote tracebacks.

On the wire these classes travel under Pyro5's names (`Pyro5.errors.CommunicationError`, ...) so that
Pyro5 peers rebuild them too; `MeshError` is Pyro5's `PyroError`.
"""

from __future__ import annotations

import builtins
import sys
import traceback
from types import TracebackType
from typing import Any


class MeshError(Exception):
    """Base of every meshrpc error."""


PyroError = MeshError  # Pyro5's name of the base class, so `except errors.PyroError` keeps working


class CommunicationError(MeshError):
    """A connection could not be made or failed."""


class ConnectionClosedError(CommunicationError):
    """The peer closed the connection (or it broke) before the reply arrived."""


class NotDeliveredError(CommunicationError):
    """The call certainly did not run: no daemon received it (connecting, the handshake or sending
    failed, or the daemon refused it unrun while shutting down). Safe to try again, whatever the method.
    A PYRONAME:/PYROMETA: proxy already tried again, for REBIND_TIMEOUT (docs/resilience.md)."""


class NoProviderError(NotDeliveredError):
    """The name (or tags) are known, but no provider could be reached within REBIND_TIMEOUT; the call
    did not run."""


class ConnectionLostError(NotDeliveredError, ConnectionClosedError):
    """The daemon had closed the proxy's connection (it stopped, or dropped the client), and connecting
    again failed: the call did not run. Also a ConnectionClosedError, which Pyro5 raises there, so a
    Pyro5 program's `except ConnectionClosedError:` (then `_pyroReconnect()`) catches it."""


class ProviderLostError(NoProviderError, ConnectionClosedError):
    """NoProviderError of a PYRONAME:/PYROMETA: proxy whose connection the daemon had closed: also a
    ConnectionClosedError, for Pyro5 programs (see ConnectionLostError)."""


class MaybeDeliveredError(CommunicationError):
    """The request was sent and no reply came: the call may have run (or may still be running).
    Re-sent automatically only for @idempotent methods (docs/resilience.md); the base of TimeoutError
    and ReplyLostError (NotSentTimeoutError is a TimeoutError only for Pyro5's sake: it did not run)."""


class TimeoutError(MaybeDeliveredError, builtins.TimeoutError):  # noqa: A001 - Pyro5's name
    """No reply within the proxy's timeout: the call may have run. Also a builtin TimeoutError."""


class NotSentTimeoutError(NotDeliveredError, TimeoutError):
    """The timeout passed before the call was sent, so it did not run: connecting, the handshake, or
    waiting for a proxy busy with another thread's call took too long. A NotDeliveredError (safe to try
    again, whatever the method) and, so that `except TimeoutError` in Pyro5 programs catches it as in
    Pyro5, also a TimeoutError: test for NotDeliveredError first when telling "did not run" from "may
    have run". Its text is the transport's (Pyro5's "receiving: timeout" for a handshake); a note
    (shown in tracebacks and by the CLI) names the target."""


class ProviderTimeoutError(NoProviderError, NotSentTimeoutError):
    """NoProviderError of a PYRONAME:/PYROMETA: proxy whose last attempt timed out (connecting, or a
    provider that accepted and never answered the handshake): also the TimeoutError Pyro5 raises there,
    so a Pyro5 program's `except TimeoutError:` catches it."""


class ReplyLostError(ConnectionClosedError, MaybeDeliveredError):
    """The connection broke after the request was sent, before the reply: the call may have run."""


class ProtocolError(CommunicationError):
    """The peer sent something that is not valid protocol 502."""


class MessageTooLargeError(ProtocolError):
    """A message is larger than MAX_MESSAGE_SIZE."""


class SerializeError(ProtocolError):
    """Data could not be serialized or deserialized."""


class UnknownSerializerError(SerializeError, ValueError, KeyError):
    """A serializer name that cannot be used: unknown, unsafe (pickle and its kin), or its package is
    not installed. Also a ValueError and a KeyError, what Pyro5 raises for a bad configured serializer
    and a bad `_pyroSerializer` override."""

    __str__ = Exception.__str__  # KeyError's would quote the message


class NamingError(MeshError):
    """A name could not be resolved or registered."""


class UnknownNameError(NamingError):
    """No source asked (the mesh, a name server) knows the name or tags: check the name, the realm
    (MESHRPC_REALM) and RESOLVE. Raised as soon as every source asked has said no; the call did not run."""


class DaemonError(MeshError):
    """The daemon refused a request (unknown object, bad registration...)."""


class SecurityError(MeshError):
    """Something was refused for safety (unsafe class, failed authentication...). A connection refused
    for credentials (a TLS certificate, the mesh key) is one; it is never retried: fix the credentials."""


class ConfigError(MeshError, ValueError):
    """Bad `MESHRPC_*` environment variables (a value of the wrong kind, or a name that is no
    setting): one line naming each, with what to do. Raised by `import meshrpc`; the CLI prints it."""

    def __init__(self, problems: list[str] | str) -> None:
        problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(problems))
        self.problems = problems


ALL_ERRORS: tuple[type[MeshError], ...] = (
    MeshError, CommunicationError, ConnectionClosedError, TimeoutError, ProtocolError,
    MessageTooLargeError, SerializeError, NamingError, DaemonError, SecurityError,
)

#: wire name (Pyro5's) -> our class, and back
_PYRO5_NAMES = {cls: ("PyroError" if cls is MeshError else cls.__name__) for cls in ALL_ERRORS}
WIRE_NAME_OF: dict[type, str] = {cls: "Pyro5.errors." + name for cls, name in _PYRO5_NAMES.items()}
CLASS_OF_WIRE_NAME: dict[str, type] = {}
for _cls, _name in _PYRO5_NAMES.items():
    CLASS_OF_WIRE_NAME["Pyro5.errors." + _name] = _cls
    CLASS_OF_WIRE_NAME["meshrpc.errors." + _cls.__name__] = _cls

REMOTE_TRACEBACK_ATTR = "_pyroTraceback"


def get_remote_traceback(exc: BaseException) -> str | None:
    """The traceback text of a remote exception, as formatted where it was raised; None if local."""
    lines = getattr(exc, REMOTE_TRACEBACK_ATTR, None)
    if lines is None:
        return None
    return "".join(map(str, lines)) if isinstance(lines, (list, tuple)) else str(lines)


def format_traceback(ex_type: Any = None, ex_value: BaseException | None = None, ex_tb: TracebackType | None = None,
                     detailed: bool = False) -> list[str]:
    """Lines describing where an exception was raised, for sending to the caller.

    `format_traceback(exc)` formats `exc`; with Pyro5's arguments `(type, value, tb)`, or none at all
    inside an `except` block (the exception being handled), it formats that one. `detailed` adds the
    local variables of every frame."""
    exc = _exception_of(ex_type, ex_value, ex_tb)
    if exc is None:
        return []
    tbe = traceback.TracebackException.from_exception(exc, capture_locals=detailed)
    lines = list(tbe.format())
    if detailed:
        lines.insert(0, " Extended stacktrace follows (most recent call last)\n")
    return lines


def get_pyro_traceback(ex_type: Any = None, ex_value: BaseException | None = None,
                       ex_tb: TracebackType | None = None) -> list[str]:
    """Pyro5's name: the local traceback lines of an exception (default: the one being handled), then
    its remote traceback when it came from another process."""
    exc = _exception_of(ex_type, ex_value, ex_tb)
    if exc is None:
        return []
    return format_remote_error(exc).splitlines(keepends=True)


def _exception_of(ex_type: Any, ex_value: BaseException | None, ex_tb: TracebackType | None) -> BaseException | None:
    """The exception meant by (exc) or (type, value, tb) arguments, or the one being handled."""
    if isinstance(ex_type, BaseException):
        return ex_type
    if ex_value is None:
        ex_value = sys.exc_info()[1]
        if ex_value is None:
            return None
        return ex_value
    if ex_tb is not None and ex_value.__traceback__ is not ex_tb:
        ex_value = ex_value.with_traceback(ex_tb)
    return ex_value


def format_remote_error(exc: BaseException) -> str:
    """Local traceback followed by the remote one, as the excepthook prints it."""
    local = "".join(traceback.format_exception(exc))
    remote = get_remote_traceback(exc)
    if not remote:
        return local
    return local + " +--- This exception was raised remotely. Remote traceback:\n" + "".join(
        " | " + line + "\n" for line in remote.rstrip("\n").split("\n")) + " +--- End of remote traceback\n"


def excepthook(ex_type: type[BaseException], ex_value: BaseException, ex_tb: TracebackType | None) -> None:
    """`sys.excepthook = meshrpc.errors.excepthook` prints remote tracebacks of uncaught errors too."""
    sys.stderr.write(format_remote_error(ex_value.with_traceback(ex_tb)))


def exception_from_wire(classname: str, args: Any, attributes: dict[str, Any] | None) -> BaseException:
    """Rebuild an exception of a known class (builtins and meshrpc errors); otherwise SerializeError."""
    cls = CLASS_OF_WIRE_NAME.get(classname)
    if cls is None:
        module, _, name = classname.rpartition(".")
        if module in ("builtins", "exceptions") and "__" not in name:
            candidate = getattr(builtins, name, None)
            if isinstance(candidate, type) and issubclass(candidate, BaseException):
                cls = candidate
    if cls is None:
        raise SerializeError(f"unsupported serialized exception class: {classname}")
    if not isinstance(args, (list, tuple)):
        args = (args,)
    try:
        exc = cls(*args)
    except Exception:  # an exception class with an unusual constructor
        try:
            exc = cls.__new__(cls)
            exc.args = tuple(args)
        except Exception:
            raise SerializeError(f"cannot rebuild exception {classname} from {args!r}") from None
    if attributes is not None and not isinstance(attributes, dict):
        raise SerializeError(f"exception attributes must be a dict, not {type(attributes).__name__}")
    for key, value in (attributes or {}).items():
        if isinstance(key, str) and not (key.startswith("__") and key.endswith("__")):
            try:
                setattr(exc, key, value)
            except (AttributeError, TypeError):
                pass
    return exc
