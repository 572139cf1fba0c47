"""Serializers, sans-I/O: serpent (default), json, marshal and msgpack. Never pickle.

Every serializer turns Python values into bytes and back, with the same class conventions as Pyro5:
objects it cannot represent natively travel as dicts with a `"__class__"` key; receivers rebuild only
classes they know (URIs, proxies, builtin and meshrpc exceptions, and classes with a registered
`dict_to_class` hook) and refuse the rest with SerializeError.
"""

from __future__ import annotations

import array
import base64
import datetime
import decimal
import inspect
import json
import logging
import marshal
import struct
import threading
import uuid
from functools import cached_property
from typing import Any, Callable

import serpent

from . import marshal_check, plain
from .constants import OOB_CLASS
from .plain import SCALARS as _PLAIN_SCALARS
from ..uri import URI
from ..errors import (WIRE_NAME_OF, DaemonError, SecurityError, SerializeError, UnknownSerializerError,
                      exception_from_wire)

try:  # optional extra
    import msgpack
except ImportError:  # pragma: no cover - depends on the environment
    msgpack = None

log = logging.getLogger("meshrpc.serializers")

ToDict = Callable[[Any], dict]
FromDict = Callable[[str, dict], Any]


class ClassHooks:
    """User hooks: class -> dict converters and class name -> object factories (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.to_dict: dict[type, ToDict] = {}
        self.from_dict: dict[str, FromDict] = {}
        self.version = 0

    def register_class_to_dict(self, cls: type, converter: ToDict, serpent_too: bool = True) -> None:
        """serpent_too: Pyro5's argument; one hook serves every serializer here, so it changes nothing."""
        if not isinstance(cls, type) or cls is type:
            raise TypeError("register_class_to_dict needs a class")
        with self._lock:
            self.to_dict = {**self.to_dict, cls: converter}
            self.version += 1

    def unregister_class_to_dict(self, cls: type) -> None:
        with self._lock:
            self.to_dict = {k: v for k, v in self.to_dict.items() if k is not cls}
            self.version += 1

    def register_dict_to_class(self, classname: str, converter: FromDict) -> None:
        with self._lock:
            self.from_dict = {**self.from_dict, classname: converter}

    def unregister_dict_to_class(self, classname: str) -> None:
        with self._lock:
            self.from_dict = {k: v for k, v in self.from_dict.items() if k != classname}


hooks = ClassHooks()
register_class_to_dict = hooks.register_class_to_dict
unregister_class_to_dict = hooks.unregister_class_to_dict
register_dict_to_class = hooks.register_dict_to_class
unregister_dict_to_class = hooks.unregister_dict_to_class

#: factories for meshrpc's own wire classes (URI, Proxy, ...), filled in by the modules that own them
WIRE_CLASSES: dict[str, Callable[[dict], Any]] = {}


class ExceptionWrapper:
    """An exception as an element of a batch result (Pyro5's `_ExceptionWrapper`)."""

    __slots__ = ("exception",)

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception

    def __wire_dict__(self) -> dict:
        return {"__class__": "Pyro5.core._ExceptionWrapper", "exception": exception_to_dict(self.exception)}


def _uri_from_wire(data: dict) -> URI:
    uri = URI.__new__(URI)
    uri.__setstate__(tuple(data["state"]))
    return uri


WIRE_CLASSES["Pyro5.core.URI"] = _uri_from_wire
WIRE_CLASSES["meshrpc.uri.URI"] = _uri_from_wire
WIRE_CLASSES["Pyro5.core._ExceptionWrapper"] = lambda d: ExceptionWrapper(
    d["exception"] if isinstance(d["exception"], BaseException) else dict_to_object(d["exception"]))


def class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__name__}"


def exception_to_dict(exc: BaseException) -> dict:
    attributes = {k: v for k, v in vars(exc).items() if not k.startswith("__")}
    # a subclass of a meshrpc error travels as its nearest known ancestor, which every peer can rebuild
    wire_name = next((WIRE_NAME_OF[c] for c in type(exc).__mro__ if c in WIRE_NAME_OF), None)
    return {"__class__": wire_name or class_name(exc), "__exception__": True,
            "args": exc.args, "attributes": attributes}


def object_to_dict(obj: Any) -> dict:
    """The dict form of an object no serializer represents natively."""
    # static lookup: never a proxy's remote __getattr__
    daemon = inspect.getattr_static(obj, "_pyroDaemon", None)
    if daemon is not None and not isinstance(obj, type):
        # an object registered in a daemon travels as a proxy to it (autoproxy); the daemon is referred
        # to weakly: a collected one, or a registration that ended, leaves a plain object
        try:
            return daemon.proxyFor(obj).__wire_dict__()
        except (ReferenceError, DaemonError):
            pass
    for cls in type(obj).__mro__:
        converter = hooks.to_dict.get(cls)
        if converter is not None:
            value = converter(obj)
            if isinstance(value, dict) and "__class__" not in value:
                # name the class the hook was registered for, so a dict_to_class hook can rebuild it (as Pyro5)
                value = {**value, "__class__": f"{cls.__module__}.{cls.__name__}"}
            return value
    wire_dict = getattr(obj, "__wire_dict__", None)
    if wire_dict is not None and not isinstance(obj, type):
        return wire_dict()
    if isinstance(obj, BaseException):
        return exception_to_dict(obj)
    getstate = getattr(type(obj), "__getstate__", None)
    if getstate is not None and getstate is not object.__getstate__:
        state = obj.__getstate__()
        if isinstance(state, dict):
            return {"__class__": class_name(obj), **state}
    try:
        value = dict(vars(obj))
    except TypeError:
        slots = getattr(obj, "__slots__", None)
        if slots is None:
            raise SerializeError(f"cannot serialize an object of class {class_name(obj)}: give it vars(), "
                                 "__getstate__ or a meshrpc.register_class_to_dict hook") from None
        value = {slot: getattr(obj, slot) for slot in ((slots,) if isinstance(slots, str) else slots)}
    value["__class__"] = class_name(obj)
    return value


def dict_to_object(data: dict) -> Any:
    """Rebuild an object from its dict form, for the classes this side knows; SerializeError otherwise."""
    try:
        return _dict_to_object(data)
    except (SerializeError, SecurityError):
        raise
    except Exception as exc:  # a malformed dict (or a hook that choked on it) is bad data, nothing else
        raise SerializeError(f"malformed serialized {data.get('__class__')!r}: {type(exc).__name__}: {exc}") from None


def _dict_to_object(data: dict) -> Any:
    classname = data.get("__class__")
    if isinstance(classname, bytes):
        classname = classname.decode("utf-8", "replace")
    if not isinstance(classname, str):
        raise SerializeError(f"bad __class__ value in serialized data: {classname!r}")
    converter = hooks.from_dict.get(classname)
    if converter is not None:
        return converter(classname, data)
    factory = WIRE_CLASSES.get(classname)
    if factory is not None:
        return factory(data)
    if "__" in classname:
        # Pyro5's words
        raise SecurityError(f"refused to deserialize types with double underscores in their name: {classname}")
    if data.get("__exception__"):
        try:
            return exception_from_wire(classname, data.get("args", ()), data.get("attributes"))
        except SerializeError:
            pass
    if classname == "float" and "value" in data:  # serpent's form of nan
        return float(data["value"])
    # Pyro5's exact text (programs compare it); what to do goes to the log
    log.warning("unsupported serialized class: %s; register a hook with meshrpc.register_dict_to_class(%r, "
                "converter) to accept it", classname, classname)
    raise SerializeError(f"unsupported serialized class: {classname}")


def recreate_objects(data: Any) -> Any:
    """Walk decoded data and replace every dict with a `__class__` key by its object."""
    t = type(data)
    if t is dict:
        if "__class__" in data:
            converted = {k: recreate_objects(v) for k, v in data.items()}
            return dict_to_object(converted)
        return {k: recreate_objects(v) for k, v in data.items()}
    if t is list:
        return [recreate_objects(v) for v in data]
    if t is tuple:
        return tuple(recreate_objects(v) for v in data)
    if t is set or t is frozenset:
        return t(recreate_objects(v) for v in data)
    return data


_SCALAR_TYPES = frozenset({bytes, str, int, float, bool, type(None)})


# `b"__class__" in raw` costs more: bytes.__contains__ first tries its operand as an int (and formats
# the TypeError it then drops); find() searches at once
_CLASS_KEY = b"__class__"


def _recreate(value: Any, raw: bytes) -> Any:
    if type(value) in _SCALAR_TYPES or raw.find(_CLASS_KEY) < 0:  # the common cases: no walk
        return value
    try:
        return recreate_objects(value)
    except RecursionError:
        raise SerializeError("serialized data nested too deeply") from None


# --- out-of-band bytes (meshrpc peers only, negotiated per connection: docs/clients.md). A bytes-like
# value travels as a marker dict (OOB_CLASS) in the payload, its raw bytes in the frame's OOB annotation.


def oob_blob(data: dict, oob: list) -> bytes:
    """The blob an OOB_CLASS marker stands for."""
    index = data.get("i")
    if type(index) is not int or not 0 <= index < len(oob) or len(data) != 2:
        raise SerializeError(f"bad out-of-band bytes marker: {data!r} ({len(oob)} blobs in the message)")
    return oob[index]


def _recreate_oob(data: Any, oob: list) -> Any:
    t = type(data)
    if t is dict:
        if "__class__" in data:
            if data["__class__"] == OOB_CLASS:
                return oob_blob(data, oob)
            return dict_to_object({k: _recreate_oob(v, oob) for k, v in data.items()})
        return {k: _recreate_oob(v, oob) for k, v in data.items()}
    if t is list:
        return [_recreate_oob(v, oob) for v in data]
    if t is tuple:
        return tuple(_recreate_oob(v, oob) for v in data)
    if t is set or t is frozenset:
        return t(_recreate_oob(v, oob) for v in data)
    return data


def _recreate_with(value: Any, raw: bytes, oob: list) -> Any:
    if type(value) in _SCALAR_TYPES or raw.find(_CLASS_KEY) < 0:
        return value
    try:
        return _recreate_oob(value, oob)
    except RecursionError:
        raise SerializeError("serialized data nested too deeply") from None


def call_tuple(object_id: str, method: str, vargs: Any, kwargs: dict | None) -> tuple:
    """The INVOKE payload's value, as Pyro5 sends it: (object, method, vargs, kwargs)."""
    return (object_id, method, vargs if vargs is not None else (), kwargs or {})


class Serializer:
    """Base: `dumps`/`loads` for values, `dumps_call`/`loads_call` for INVOKE payloads."""

    id: int = 0
    name: str = ""
    #: True when `oob` (out-of-band bytes, between meshrpc peers) changes anything: serpent and json.
    #: marshal and msgpack carry bytes natively and ignore it.
    oob: bool = False
    #: an INVOKE payload is the tuple (object, method, vargs, kwargs) (json's is a dict: split_call)
    tuple_calls: bool = True

    def dumps(self, obj: Any, oob: list | None = None) -> bytes:
        """`oob`: a list: bytes-like values are appended to it and replaced by OOB_CLASS markers."""
        raise NotImplementedError

    def loads(self, data: bytes, oob: list | None = None) -> Any:
        """`oob`: the blobs of the frame; OOB_CLASS markers become them (a list, even empty, enables them)."""
        raise NotImplementedError

    def dumps_call(self, object_id: str, method: str, vargs: Any, kwargs: dict | None,
                   oob: list | None = None) -> bytes:
        return self.dumps(call_tuple(object_id, method, vargs, kwargs), oob)

    @cached_property  # read for every call and reply: after the first time, a plain attribute
    def values(self) -> "Serializer":
        """The serializer whose values a message in this encoding carries, and that replies use:
        itself, except for SerpentBinary (serpent's values in marshal form)."""
        return self

    def encode(self, obj: Any, oob: list | None = None, binary: bool = False) -> tuple[int, bytes]:
        """(serializer id for the frame, payload). `binary`: the peer accepts frame.CAP_BINARY, so
        serpent may send plain values in their binary form (SerpentBinary); the others ignore it."""
        return self.id, self.dumps(obj, oob)

    def encode_call(self, object_id: str, method: str, vargs: Any, kwargs: dict | None,
                    oob: list | None = None, binary: bool = False) -> tuple[int, bytes]:
        """encode() for an INVOKE payload."""
        return self.id, self.dumps_call(object_id, method, vargs, kwargs, oob)

    def scalar_call_form(self, binary: bool) -> tuple[int, int] | None:
        """(serializer id, marshal version) when encode_call writes a call that wire.plain.scalar_call
        says yes to as marshal.dumps((object, method, vargs, {}), version) in a frame of that id (so a
        session may build it without the serializer); None when it does not."""
        return None

    def scalar_value_form(self, binary: bool) -> tuple[int, int] | None:
        """(serializer id, marshal version) when encode(value, oob, binary) gives (that id,
        marshal.dumps(value, version)) for every value whose type is in wire.plain.SCALARS (so a session
        may build a reply of one without the serializer); None when it does not."""
        return None

    def split_call(self, data: bytes, oob: list | None = None) -> tuple[Any, Any, Any, Any]:
        """The four parts of an INVOKE payload, unchecked."""
        return self._split(self.loads(data, oob))

    @staticmethod
    def _split(call: Any) -> tuple[Any, Any, Any, Any]:
        try:
            object_id, method, vargs, kwargs = call
        except (TypeError, ValueError):
            raise SerializeError("malformed call: expected (object, method, vargs, kwargs)") from None
        return object_id, method, vargs, kwargs

    def loads_call(self, data: bytes, oob: list | None = None, prefixes: Any = None) -> tuple[str, str, tuple, dict]:
        """The call (object id, method, vargs, kwargs) of an INVOKE payload. `prefixes`: where the marshal
        guard remembers verified prefixes (marshal_check.Prefixes, e.g. a connection's; None: the
        thread's); only serializers whose messages are marshal data use it."""
        if self.tuple_calls:
            call = self.loads(data, oob)
            # the common case: the decoded value is the call as it must be, so no new tuple is made
            if type(call) is tuple and len(call) == 4 and type(call[1]) is str and type(call[2]) is tuple \
                    and type(call[3]) is dict:
                return call
            return self._call_of(call)
        return self._checked_call(*self.split_call(data, oob))

    def _call_of(self, call: Any) -> tuple[str, str, tuple, dict]:
        """loads_call's result for a decoded tuple-form call that is not already as it must be."""
        return self._checked_call(*self._split(call))

    @staticmethod
    def _checked_call(object_id: Any, method: Any, vargs: Any, kwargs: Any) -> tuple[str, str, tuple, dict]:
        if not isinstance(vargs, (tuple, list)) or not isinstance(kwargs, (dict, type(None))):
            raise SerializeError("malformed call: vargs must be a sequence and kwargs a dict")
        if not isinstance(method, str):
            raise SerializeError("malformed call: the method name must be a string")
        return object_id, method, tuple(vargs), kwargs or {}

    def _decode_error(self, exc: Exception) -> SerializeError:
        if isinstance(exc, (SerializeError, SecurityError)):
            return exc
        return SerializeError(f"cannot decode {self.name} data: {type(exc).__name__}: {exc}")

    def __repr__(self) -> str:
        return f"<{self.name} serializer id={self.id}>"


class _SerpentWriter(serpent.Serializer):
    """serpent's writer, with meshrpc's conversions for every class it has no rule for."""

    dispatch = dict(serpent.Serializer.dispatch)

    def _ser_via_dict(self, obj: Any, out: list, level: int) -> None:
        if id(obj) in self.serialized_obj_ids:
            raise ValueError("circular reference detected")
        self.serialized_obj_ids.add(id(obj))
        try:
            self._serialize(object_to_dict(obj), out, level)
        finally:
            self.serialized_obj_ids.discard(id(obj))

    dispatch[object] = _ser_via_dict
    dispatch[BaseException] = _ser_via_dict


_BYTES_TYPES = (bytes, bytearray, memoryview)


class _SerpentOobWriter(_SerpentWriter):
    """The writer for out-of-band mode: bytes-like values become markers, their data goes to `oob`.
    (serpent checks bytes types before its dispatch table, so this overrides `_serialize` itself;
    the normal writer is untouched.)"""

    oob: list

    def _serialize(self, obj: Any, out: list, level: int) -> None:
        if type(obj) in _BYTES_TYPES:
            out.append(f"{{'__class__':'{OOB_CLASS}','i':{len(self.oob)}}}")
            self.oob.append(obj)
            return
        super()._serialize(obj, out, level)


class SerpentSerializer(Serializer):
    id, name = 1, "serpent"
    oob = True

    def __init__(self) -> None:
        self._hooks_version = -1
        self._dispatch = _SerpentWriter.dispatch

    def _writer(self, oob: list | None = None) -> _SerpentWriter:
        if oob is None:
            writer = _SerpentWriter(False, True, False)
        else:
            writer = _SerpentOobWriter(False, True, False)
            writer.oob = oob
        if self._hooks_version != hooks.version:  # user hooks win over serpent's own rules
            table = dict(_SerpentWriter.dispatch)
            for cls in hooks.to_dict:
                table[cls] = _SerpentWriter._ser_via_dict
            self._dispatch, self._hooks_version = table, hooks.version
        writer.dispatch = self._dispatch
        return writer

    def dumps(self, obj: Any, oob: list | None = None) -> bytes:
        try:
            return self._writer(oob).serialize(obj)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializeError(f"cannot serialize with serpent: {exc}") from None

    def loads(self, data: bytes, oob: list | None = None) -> Any:
        if data.__class__ is not bytes:  # bytes(data) of bytes is data itself, found the slow way
            data = bytes(data)
        try:
            value = serpent.loads(data)
        except Exception as exc:  # serpent raises ValueError, SyntaxError, MemoryError...
            raise self._decode_error(exc) from None
        if oob is not None:
            return _recreate_with(value, data, oob)
        return _recreate(value, data)

    def encode(self, obj: Any, oob: list | None = None, binary: bool = False) -> tuple[int, bytes]:
        if binary:
            if type(obj) in _PLAIN_SCALARS:  # most results: plain.dumps inline
                return SerpentBinary.id, marshal.dumps(obj, plain.MARSHAL_VERSION)
            data = plain.dumps(obj)
            if data is not None:
                return SerpentBinary.id, data
        return self.id, self.dumps(obj, oob)

    def encode_call(self, object_id: str, method: str, vargs: Any, kwargs: dict | None,
                    oob: list | None = None, binary: bool = False) -> tuple[int, bytes]:
        if binary:
            data = plain.dumps_call(object_id, method, vargs, kwargs)
            if data is not None:
                return SerpentBinary.id, data
        return self.id, self.dumps_call(object_id, method, vargs, kwargs, oob)


    def scalar_call_form(self, binary: bool) -> tuple[int, int] | None:
        return (SerpentBinary.id, plain.MARSHAL_VERSION) if binary else None  # plain.dumps_call's form

    def scalar_value_form(self, binary: bool) -> tuple[int, int] | None:
        return (SerpentBinary.id, plain.MARSHAL_VERSION) if binary else None  # encode's first test


class _MarshalForm(Serializer):
    """A serializer whose messages are marshal data, checked by wire.marshal_check first."""

    plain_only = False  # marshal_check's plain_only: only the type codes wire.plain writes

    def loads(self, data: bytes, oob: list | None = None) -> Any:
        if data.__class__ is not bytes:  # bytes(data) of bytes is data itself, found the slow way
            data = bytes(data)
        try:
            # marshal trusts declared sizes: never let a peer choose them (plain_only: plain type codes only)
            marshal_check.check(data, self.plain_only)
            value = marshal.loads(data)
        except Exception as exc:
            raise self._decode_error(exc) from None
        if type(value) in _SCALAR_TYPES:  # _recreate's first test, inline: most results are scalars
            return value
        return _recreate(value, data)  # a plain dict may still hold a "__class__" key, as with serpent

    def loads_call(self, data: bytes, oob: list | None = None, prefixes: Any = None) -> tuple[str, str, tuple, dict]:
        # loads() and the base class's shape test in one step: every request of the usual form
        if data.__class__ is not bytes:
            data = bytes(data)
        try:
            marshal_check.check(data, self.plain_only, prefixes)
            call = marshal.loads(data)
        except Exception as exc:
            raise self._decode_error(exc) from None
        if (type(call) is tuple and len(call) == 4 and type(call[1]) is str and type(call[2]) is tuple
                and type(call[3]) is dict and data.find(_CLASS_KEY) < 0):
            return call
        return self._call_of(_recreate(call, data))


class SerpentBinary(_MarshalForm):
    """serpent's values in marshal's binary form (wire.plain): sent only between meshrpc peers that
    agreed on frame.CAP_BINARY, and only for plain values, which serpent would carry unchanged. The
    receiver gets exactly serpent's result, several times faster; replies go back as serpent."""

    id, name = 77, "serpent-binary"
    plain_only = True

    @cached_property
    def values(self) -> Serializer:
        return BY_ID[SerpentSerializer.id]

    def dumps(self, obj: Any, oob: list | None = None) -> bytes:
        data = plain.dumps(obj)
        if data is None:
            raise SerializeError("only plain values have a binary serpent form; send them as serpent")
        return data



_MARSHAL_TYPES = (str, int, float, type(None), bool, complex, bytes, bytearray)


class MarshalSerializer(_MarshalForm):
    id, name = 2, "marshal"

    def dumps(self, obj: Any, oob: list | None = None) -> bytes:
        if type(obj) in _PLAIN_SCALARS or plain.is_plain(obj):
            return marshal.dumps(obj)
        # marshal would write any bytes-like value (an array.array too) as bytes: convert as Pyro5 does
        try:
            return marshal.dumps(self._convert(obj))
        except (ValueError, RecursionError) as exc:
            raise SerializeError(f"cannot serialize with marshal: {exc}") from None

    def dumps_call(self, object_id: str, method: str, vargs: Any, kwargs: dict | None,
                   oob: list | None = None) -> bytes:
        if plain.scalar_call(object_id, method, vargs, kwargs):  # most calls: no walk
            return marshal.dumps((object_id, method, vargs, {}))
        return self.dumps(call_tuple(object_id, method, vargs, kwargs))

    def scalar_call_form(self, binary: bool) -> tuple[int, int] | None:
        return self.id, marshal.version  # dumps_call's form

    def scalar_value_form(self, binary: bool) -> tuple[int, int] | None:
        return self.id, marshal.version  # dumps' first test

    def _convert(self, obj: Any) -> Any:
        t = type(obj)
        if t in _MARSHAL_TYPES:
            return obj
        if t is tuple or t is list:
            return t(self._convert(v) for v in obj)
        if t is dict:
            return {self._convert(k): self._convert(v) for k, v in obj.items()}
        if t is set or t is frozenset:
            return t(self._convert(v) for v in obj)
        if isinstance(obj, uuid.UUID):
            return str(obj)
        if isinstance(obj, array.array):
            return obj.tounicode() if obj.typecode == "u" else obj.tolist()
        return self._convert(object_to_dict(obj))



def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return tuple(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"data": base64.b64encode(obj).decode("ascii"), "encoding": "base64"}
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, complex):
        return [obj.real, obj.imag]
    if isinstance(obj, array.array):
        return obj.tounicode() if obj.typecode == "u" else obj.tolist()
    return object_to_dict(obj)


def _object_hook(d: dict) -> Any:
    return dict_to_object(d) if "__class__" in d else d


class JsonSerializer(Serializer):
    id, name = 3, "json"
    oob = True
    tuple_calls = False

    def dumps(self, obj: Any, oob: list | None = None) -> bytes:
        default = _json_default
        if oob is not None:
            def default(value: Any) -> Any:
                if isinstance(value, _BYTES_TYPES):
                    oob.append(value)
                    return {"__class__": OOB_CLASS, "i": len(oob) - 1}
                return _json_default(value)
        try:
            return json.dumps(obj, ensure_ascii=False, default=default).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializeError(f"cannot serialize with json: {exc}") from None

    def loads(self, data: bytes, oob: list | None = None) -> Any:
        hook = _object_hook
        if oob is not None:
            def hook(d: dict) -> Any:
                if "__class__" not in d:
                    return d
                return oob_blob(d, oob) if d["__class__"] == OOB_CLASS else dict_to_object(d)
        try:
            return json.loads(bytes(data).decode("utf-8"), object_hook=hook)
        except Exception as exc:
            raise self._decode_error(exc) from None

    def dumps_call(self, object_id: str, method: str, vargs: Any, kwargs: dict | None,
                   oob: list | None = None) -> bytes:
        return self.dumps({"object": object_id, "method": method,
                           "params": vargs if vargs is not None else [], "kwargs": kwargs or {}}, oob)

    def split_call(self, data: bytes, oob: list | None = None) -> tuple[Any, Any, Any, Any]:
        call = self.loads(data, oob)
        try:
            return call["object"], call["method"], call["params"], call["kwargs"]
        except (KeyError, TypeError):
            raise SerializeError("malformed json call: expected object, method, params and kwargs") from None


# msgpack extension codes, as Pyro5 uses them
_EXT_COMPLEX, _EXT_BIGINT, _EXT_DATETIME, _EXT_DATE = 0x30, 0x31, 0x32, 0x33


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return tuple(obj)
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, complex):
        return msgpack.ExtType(_EXT_COMPLEX, struct.pack("dd", obj.real, obj.imag))
    if isinstance(obj, datetime.datetime):
        if obj.tzinfo:
            raise SerializeError("msgpack cannot carry a datetime with a timezone; convert it first")
        return msgpack.ExtType(_EXT_DATETIME, struct.pack("d", obj.timestamp()))
    if isinstance(obj, datetime.date):
        return msgpack.ExtType(_EXT_DATE, struct.pack("l", obj.toordinal()))
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, int):
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode("ascii"))
    if isinstance(obj, array.array):
        return obj.tounicode() if obj.typecode == "u" else obj.tolist()
    return object_to_dict(obj)


def _msgpack_ext(code: int, data: bytes) -> Any:
    if code == _EXT_COMPLEX:
        return complex(*struct.unpack("dd", data))
    if code == _EXT_BIGINT:
        return int(data)
    if code == _EXT_DATETIME:
        return datetime.datetime.fromtimestamp(struct.unpack("d", data)[0])
    if code == _EXT_DATE:
        return datetime.date.fromordinal(struct.unpack("l", data)[0])
    raise SerializeError(f"unknown msgpack extension code {code}")


class MsgpackSerializer(Serializer):
    id, name = 4, "msgpack"

    def dumps(self, obj: Any, oob: list | None = None) -> bytes:
        try:
            return msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise SerializeError(f"cannot serialize with msgpack: {exc}") from None

    def loads(self, data: bytes, oob: list | None = None) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, object_hook=_object_hook, ext_hook=_msgpack_ext,
                                   strict_map_key=False)
        except Exception as exc:
            raise self._decode_error(exc) from None


_ALL: list[Serializer] = [SerpentSerializer(), MarshalSerializer(), JsonSerializer()]
if msgpack is not None:
    _ALL.append(MsgpackSerializer())
BY_NAME: dict[str, Serializer] = {s.name: s for s in _ALL}
# every encoding a frame may carry; SerpentBinary is not a serializer to choose, so not BY_NAME
BY_ID: dict[int, Serializer] = {s.id: s for s in [*_ALL, SerpentBinary()]}
KNOWN_NAMES = ("serpent", "marshal", "json", "msgpack")
REFUSED_NAMES = ("pickle", "dill", "cloudpickle")


def by_name(name: str) -> Serializer:
    """The serializer called `name`; UnknownSerializerError (a ValueError and KeyError too, as in Pyro5)
    when it cannot be used."""
    serializer = BY_NAME.get(name)
    if serializer is not None:
        return serializer
    if name in REFUSED_NAMES:
        raise UnknownSerializerError(f"serializer {name!r} is unsafe (it can run code on the receiver) and is "
                                     f"not supported; use one of {', '.join(BY_NAME)}")
    if name == "msgpack":
        raise UnknownSerializerError("serializer 'msgpack' needs the msgpack package: "
                                     "pip install 'meshrpc[msgpack]'")
    raise UnknownSerializerError(f"unknown serializer {name!r}; choose one of {', '.join(BY_NAME)}")


def by_id(serializer_id: int) -> Serializer:
    serializer = BY_ID.get(serializer_id)
    if serializer is None:
        raise SerializeError(f"unknown serializer id {serializer_id}")
    return serializer


__all__ = ["Serializer", "by_name", "by_id", "hooks", "register_class_to_dict", "register_dict_to_class",
           "unregister_class_to_dict", "unregister_dict_to_class", "ExceptionWrapper"]
