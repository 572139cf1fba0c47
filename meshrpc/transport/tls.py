"""TLS with the stdlib `ssl` module: contexts built from Settings, client wrapping, and the channel a
FramedConnection reads and writes an SSLSocket through. See docs/security.md.

Server side, an accepted socket is wrapped non-blocking *without* a handshake (`wrap_server`); the
handshake then advances inside `TLSChannel.recv` each time the connection is readable, on the worker
that serves it, which hands the connection back to the daemon's selector when the client stalls. So a
client that connects and never finishes its handshake holds neither the selector loop nor a worker,
and the daemon's HANDSHAKE_TIMEOUT closes it.

Decrypted bytes can sit in the SSL object while poll() sees nothing readable on the socket: every read
here drains `pending()`, so that after a read returns nothing is left behind and poll() stays right.

This module imports `ssl`; plain daemons and proxies never import it.
"""

from __future__ import annotations

import _socket
import logging
import os
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable

from ..errors import CommunicationError, ConnectionClosedError, ProtocolError, SecurityError, TimeoutError
from ..wire.frame import TAG  # the first bytes of a plain protocol 502 message

log = logging.getLogger("meshrpc.security")


class TLSError(CommunicationError, SecurityError):
    """A TLS connection was refused: the peer's certificate did not verify, or ours was refused
    (a SecurityError: refused for credentials, not worth a retry)."""


# ----------------------------------------------------------------------------------- contexts
_contexts: dict[tuple, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _stamp(path: str) -> tuple:
    """A cache key part for a file or directory: a replaced certificate file gives a new context."""
    if not path:
        return ("",)
    try:
        st = os.stat(path)
        return (path, st.st_mtime_ns, st.st_size)
    except OSError:
        return (path, None)


def _no_password(setting: str, path: str) -> Callable[[], bytes]:
    def refuse() -> bytes:  # never let OpenSSL prompt on a terminal for the passphrase
        raise SecurityError(f"the private key {path} is encrypted: set {setting}")
    return refuse


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0) | ssl.OP_NO_COMPRESSION


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, passwd: str, names: tuple[str, str, str]) -> None:
    cert_setting, key_setting, passwd_setting = names
    try:
        ctx.load_cert_chain(cert, key or None,
                            passwd or _no_password(passwd_setting, key or cert))  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        missing = exc.filename or cert
        raise SecurityError(f"cannot load {cert_setting}/{key_setting}: no such file {missing!r}") from None
    except ssl.SSLError as exc:
        raise SecurityError(f"cannot load {cert_setting} {cert!r}" + (f" with {key_setting} {key!r}" if key else "")
                            + f": {exc.reason or exc} (a PEM certificate and its matching private key are needed"
                            + (f"; is {passwd_setting} right?)" if passwd else ")")) from None


def _load_cas(ctx: ssl.SSLContext, cacerts: str) -> None:
    try:
        if os.path.isdir(cacerts):
            ctx.load_verify_locations(capath=cacerts)
        else:
            ctx.load_verify_locations(cafile=cacerts)
    except FileNotFoundError:
        raise SecurityError(f"cannot load SSL_CACERTS: no such file {cacerts!r}") from None
    except ssl.SSLError as exc:
        raise SecurityError(f"cannot load SSL_CACERTS {cacerts!r}: {exc.reason or exc}") from None


def server_context(settings: Any, optional_client_cert: bool = False) -> ssl.SSLContext:
    """The daemon's context: its certificate, and client certificates checked when SSL_REQUIRECLIENTCERT.
    `optional_client_cert`: a certificate the client presents must verify, but one it lacks does not fail
    the handshake (the asyncio daemon refuses such a client in its own handshake, where it can say why:
    asyncio drops the TLS alert that would)."""
    if not settings.SSL_SERVERCERT:
        raise SecurityError("SSL is on but SSL_SERVERCERT is not set: a TLS daemon needs a certificate "
                            "and private key (docs/security.md)")
    if settings.SSL_REQUIRECLIENTCERT and not settings.SSL_CACERTS:
        raise SecurityError("SSL_REQUIRECLIENTCERT needs SSL_CACERTS: the CA certificates that client "
                            "certificates must be signed by")
    key = ("server", _stamp(settings.SSL_SERVERCERT), _stamp(settings.SSL_SERVERKEY), settings.SSL_SERVERKEYPASSWD,
           _stamp(settings.SSL_CACERTS), bool(settings.SSL_REQUIRECLIENTCERT), optional_client_cert)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _harden(ctx)
            ctx.num_tickets = 0  # meshrpc and Pyro5 clients never resume sessions: send no tickets
            _load_chain(ctx, settings.SSL_SERVERCERT, settings.SSL_SERVERKEY, settings.SSL_SERVERKEYPASSWD,
                        ("SSL_SERVERCERT", "SSL_SERVERKEY", "SSL_SERVERKEYPASSWD"))
            if settings.SSL_CACERTS:
                _load_cas(ctx, settings.SSL_CACERTS)
            # as Pyro5: one-way TLS unless client certificates are required
            ctx.verify_mode = (ssl.CERT_NONE if not settings.SSL_REQUIRECLIENTCERT
                               else ssl.CERT_OPTIONAL if optional_client_cert else ssl.CERT_REQUIRED)
            _contexts[key] = ctx
    return ctx


def client_context(settings: Any, check_hostname: bool = True) -> ssl.SSLContext:
    """The proxy's context: the daemon's certificate must verify, against SSL_CACERTS only when set
    (else the system's trust store), and match the host of the URI when `check_hostname`."""
    key = ("client", _stamp(settings.SSL_CACERTS), _stamp(settings.SSL_CLIENTCERT), _stamp(settings.SSL_CLIENTKEY),
           settings.SSL_CLIENTKEYPASSWD, check_hostname)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
            _harden(ctx)
            if settings.SSL_CACERTS:
                _load_cas(ctx, settings.SSL_CACERTS)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            ctx.check_hostname = check_hostname
            if settings.SSL_CLIENTCERT:
                _load_chain(ctx, settings.SSL_CLIENTCERT, settings.SSL_CLIENTKEY, settings.SSL_CLIENTKEYPASSWD,
                            ("SSL_CLIENTCERT", "SSL_CLIENTKEY", "SSL_CLIENTKEYPASSWD"))
            _contexts[key] = ctx
    return ctx


# ----------------------------------------------------------------------------------- wrapping
def wrap_server(sock: socket.socket, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """An accepted socket, wrapped non-blocking; its handshake runs later, in TLSChannel.recv."""
    sock.setblocking(False)
    return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def wrap_client(sock: socket.socket, settings: Any, host: str | None, timeout: float | None,
                where: str) -> ssl.SSLSocket:
    """A connected client socket after a completed TLS handshake (within `timeout`).

    Raises TLSError when a certificate was refused (this side's or the daemon's: not worth a retry),
    TimeoutError or CommunicationError when the handshake broke off."""
    try:
        ctx = client_context(settings, check_hostname=bool(host))  # Unix sockets: the chain only, no host
        sock.settimeout(timeout)
        return ctx.wrap_socket(sock, server_side=False, server_hostname=host or None)
    except OSError as exc:
        raise handshake_error(exc, where) from None
    finally:
        sock.close()  # wrap_socket detached it: this closes nothing on success


def handshake_error(exc: OSError, where: str) -> Exception:
    """What a client's failed TLS handshake with `where` raises (both drivers): TLSError when a
    certificate was refused (this side's or the daemon's: not worth a retry), TimeoutError or
    CommunicationError when the handshake broke off."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(f"TLS: the certificate of {where} was refused: {describe(exc)}")
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)):
        return CommunicationError(f"TLS handshake with {where} failed: the daemon closed the connection "
                                  "(does it serve TLS? a plain daemon closes TLS connections)")
    if isinstance(exc, ssl.SSLError):
        text = describe(exc)
        if _refused_by_peer(exc):
            return TLSError(f"TLS handshake with {where} refused: {text}")
        return CommunicationError(f"TLS handshake with {where} failed: {text}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TimeoutError(f"TLS handshake with {where} timed out (does it serve TLS?)")
    return CommunicationError(f"TLS handshake with {where} failed: {exc.strerror or exc}")


_HINTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the daemon requires a client certificate (set SSL_CLIENTCERT)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate and one is required "
                                         "(SSL_REQUIRECLIENTCERT; the client needs SSL_CLIENTCERT)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust the CA of our certificate (check its SSL_CACERTS)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer refused our certificate",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (plain connection?)",
    "HTTP_REQUEST": "the peer sent HTTP, not TLS",
    "UNKNOWN_PROTOCOL": "the peer does not speak TLS",
    "NO_SHARED_CIPHER": "no cipher in common",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (TLS 1.2 at least)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (TLS 1.2 at least)",
}
_PEER_REFUSALS = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                  "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_HANDSHAKE_FAILURE"}


def peer_refusal(text: str) -> str | None:
    """The hint for a refusal by the peer named in an error text (a TLS 1.3 daemon refuses a client's
    certificate after the handshake, at the first read), else None."""
    upper = text.upper()
    code = next((code for code in _PEER_REFUSALS if code in upper), None)
    return None if code is None else _HINTS.get(code, "the daemon refused this client's certificate")


def describe(exc: BaseException) -> str:
    """A readable reason for a TLS failure, with a hint where one helps."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        hints = {
            "self-signed certificate": "set SSL_CACERTS to the CA (or self-signed certificate) that signed it",
            "unable to get local issuer certificate": "not signed by a CA in SSL_CACERTS (or the system store)",
            "mismatch": "the certificate does not name the URI's host: it needs that DNS name or IP address "
                        "in its subjectAltName",
            "certificate has expired": "renew the certificate",
        }
        for needle, hint in hints.items():
            if needle in message:
                return f"{message} ({hint})"
        return message
    reason = getattr(exc, "reason", None) or ""
    hint = _HINTS.get(reason)
    if hint:
        return f"{hint} [{reason}]"
    return str(exc)


def _refused_by_peer(exc: ssl.SSLError) -> bool:
    return (getattr(exc, "reason", None) or "") in _PEER_REFUSALS


# ----------------------------------------------------------------------------------- the channel
class TLSChannel:
    """How a FramedConnection reads and writes its SSLSocket (see the module docstring).

    `recv(size)` returns bytes, b"" when the peer closed, or None when no application data could be
    read yet (a partial TLS record, or the handshake still going on, on a non-blocking socket)."""

    __slots__ = ("sock", "handshaking", "send_timeout", "on_plaintext")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.handshaking = sock.version() is None  # a daemon's accepted socket: the handshake comes in recv
        self.send_timeout: float | None = None  # non-blocking sockets: most seconds without progress
        # a daemon sets this: called (channel, data) with the bytes of a client that sent plain
        # protocol 502 (no TLS), to answer it in the clear with send_plain()
        self.on_plaintext: Callable[[TLSChannel, bytes], None] | None = None

    def recv(self, size: int) -> bytes | None:
        sock = self.sock
        if self.handshaking and not self._handshake():
            return None
        try:
            data = sock.recv(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        except ssl.SSLError as exc:
            raise ConnectionClosedError(f"TLS error: {describe(exc)}") from None
        pending = sock.pending()
        while pending:  # decrypted bytes left in the SSL object: poll() cannot see them, take them now
            data += sock.recv(pending)
            pending = sock.pending()
        return data

    def _handshake(self) -> bool:
        """Advance the server handshake without blocking; True once it is complete."""
        sock = self.sock
        if self.on_plaintext is not None and not self._check_plaintext():
            return False
        try:
            sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError):
            raise ConnectionClosedError("the client closed the connection during the TLS handshake") from None
        except ssl.SSLError as exc:
            raise ProtocolError(f"TLS handshake failed: {describe(exc)}") from None
        except OSError as exc:
            raise ConnectionClosedError(f"TLS handshake broke off: {exc.strerror or exc}") from None
        self.handshaking = False
        return True

    def _check_plaintext(self) -> bool:
        """Before the handshake: a client speaking plain protocol 502 gets a plain refusal it can read.
        False while too few bytes came to tell."""
        raw = _socket.socket  # the file descriptor itself, under the SSL layer
        try:
            head = raw.recv(self.sock, len(TAG), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            head = b""  # let the handshake report it
        if head and TAG.startswith(head):
            if len(head) < len(TAG):
                return False
            try:
                data = raw.recv(self.sock, 65536)  # take it: closing with unread data would reset the connection
            except OSError:
                data = head
            hook, self.on_plaintext = self.on_plaintext, None
            if hook is not None:
                hook(self, data)
            # refused and answered: closed quietly (the hook logs it; a plain probe is no attack)
            raise ConnectionClosedError("the client sent plain (non-TLS) messages; this daemon accepts TLS only")
        self.on_plaintext = None  # TLS or garbage: the handshake decides
        return True

    def send_plain(self, data: bytes) -> None:
        """Write bytes in the clear, under the SSL layer (only for refusing a plain client)."""
        try:
            _socket.socket.send(self.sock, data)
        except OSError:
            pass

    def sendall(self, data: bytes | memoryview) -> None:
        sock = self.sock
        if sock.gettimeout() != 0.0:  # a blocking socket (proxies): ssl's sendall waits within its timeout
            try:
                sock.sendall(data)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
                raise ConnectionClosedError(f"TLS error: {self._peer_reason(exc)}") from None
            return
        view = memoryview(data)
        total, sent_total = len(view), 0
        timeout = self.send_timeout
        deadline = time.monotonic() + timeout if timeout else None
        while sent_total < total:
            try:
                # after a want-write, OpenSSL must be given the same bytes again: the slice is only
                # advanced by what was accepted
                sent = sock.send(view[sent_total:])
            except ssl.SSLWantWriteError:
                self._wait(select.POLLOUT, deadline)
                continue
            except ssl.SSLWantReadError:
                self._wait(select.POLLIN, deadline)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                raise BrokenPipeError("the peer closed the connection") from None
            sent_total += sent
            if timeout:
                deadline = time.monotonic() + timeout  # progress: the limit is on a stall, not the whole reply

    def _peer_reason(self, exc: BaseException) -> str:
        """Why a write failed: with TLS 1.3 a daemon refuses a client certificate after the client's
        side of the handshake completed, so the first write meets the closed connection while the
        daemon's alert, which says why, waits to be read."""
        try:
            self.sock.settimeout(0.2)
            self.sock.recv(1)
        except ssl.SSLError as alert:
            if getattr(alert, "reason", None):
                return describe(alert)
        except OSError:
            pass
        return describe(exc) if isinstance(exc, ssl.SSLError) else (getattr(exc, "strerror", None) or str(exc))

    def _wait(self, event: int, deadline: float | None) -> None:
        poller = select.poll()
        poller.register(self.sock, event)
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if poller.poll(None if remaining is None else remaining * 1000):
                return
            if remaining is not None and time.monotonic() >= deadline:  # type: ignore[operator]
                raise socket.timeout("the client took nothing of the reply within SEND_TIMEOUT")

    def getpeercert(self) -> dict | None:
        try:
            return self.sock.getpeercert()
        except (ValueError, OSError):
            return None


__all__ = ["TLSChannel", "TLSError", "client_context", "describe", "handshake_error", "peer_refusal", "server_context",
           "wrap_client", "wrap_server"]
