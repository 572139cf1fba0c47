"""Pyro5's `serializers` module under meshrpc: `SerializerBase` (the class hooks), and one object per
serializer with Pyro5's methods (`dumps`, `loads`, `dumpsCall`, `loadsCall`, ...) for programs that
serialize data themselves. The messages meshrpc sends use meshrpc.wire.serializers directly.
"""

from __future__ import annotations

import builtins
from typing import Any

from .errors import SerializeError
from .wire import serializers as _wire
from .wire.serializers import hooks as _hooks



_NATIVE_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})

#: builtin exception classes by name: the ones a receiver rebuilds (plus meshrpc.errors classes)
all_exceptions: dict[str, type] = {name: cls for name, cls in vars(builtins).items()
                                   if isinstance(cls, type) and issubclass(cls, BaseException)}


def _as_pyro5_error(exc: SerializeError) -> Exception:
    """Pyro5's serializers let the ValueError of a value that contains itself through; meshrpc's
    messages raise SerializeError for it. Pyro5's API here keeps Pyro5's type."""
    text = str(exc).lower()
    if "circular" in text or "recursion" in text:
        return ValueError(str(exc))
    return exc


class SerializerBase:
    """One serializer with Pyro5's interface. The class hooks (`register_class_to_dict`, ...) are
    shared by every serializer, as in Pyro5."""

    serializer_id = 0
    name = ""

    register_class_to_dict = staticmethod(_hooks.register_class_to_dict)
    unregister_class_to_dict = staticmethod(_hooks.unregister_class_to_dict)
    register_dict_to_class = staticmethod(_hooks.register_dict_to_class)
    unregister_dict_to_class = staticmethod(_hooks.unregister_dict_to_class)

    def __init__(self) -> None:
        self._codec = _wire.by_id(self.serializer_id)
        self._replacements: dict[type, Any] = {}

    def dumps(self, data: Any) -> bytes:
        try:
            return self._codec.dumps(self._replaced(data))
        except SerializeError as exc:
            raise _as_pyro5_error(exc) from None

    def loads(self, data: bytes | bytearray | memoryview) -> Any:
        return self._codec.loads(bytes(data))

    def dumpsCall(self, obj: str, method: str, vargs: Any, kwargs: dict | None) -> bytes:
        try:
            return self._codec.dumps_call(obj, method, self._replaced(vargs), self._replaced(kwargs))
        except SerializeError as exc:
            raise _as_pyro5_error(exc) from None

    def loadsCall(self, data: bytes | bytearray | memoryview) -> tuple[Any, Any, Any, Any]:
        """(object id, method, vargs, kwargs) as they were sent."""
        return self._codec.split_call(bytes(data))

    def register_type_replacement(self, object_type: type, replacement_function: Any) -> None:
        """Serialize objects of `object_type` as `replacement_function(obj)` (this serializer only).
        Types the serializer represents natively (int, str, list...) are never replaced."""
        if not isinstance(object_type, type) or object_type is type:
            raise ValueError("register_type_replacement needs a class (other than type)")
        self._replacements[object_type] = replacement_function

    def _replaced(self, value: Any, seen: frozenset[int] = frozenset()) -> Any:
        if not self._replacements or type(value) in _NATIVE_SCALARS or id(value) in seen:
            return value  # (a container inside itself is left for the serializer to refuse)
        for cls in type(value).__mro__:
            replace = self._replacements.get(cls)
            if replace is not None:
                return replace(value)
        if type(value) in (list, tuple, set, frozenset):
            inner = seen | {id(value)}
            return type(value)(self._replaced(item, inner) for item in value)
        if type(value) is dict:
            inner = seen | {id(value)}
            return {key: self._replaced(item, inner) for key, item in value.items()}
        return value

    @staticmethod
    def class_to_dict(obj: Any) -> dict:
        """The dict form an object travels as when no serializer represents it natively."""
        return _wire.object_to_dict(obj)

    @staticmethod
    def dict_to_class(data: dict) -> Any:
        """The object a dict form stands for (known classes only: SerializeError otherwise)."""
        return _wire.dict_to_object(data)

    def recreate_classes(self, literal: Any) -> Any:
        """Replace the dict forms inside a deserialized value by the objects they stand for."""
        return _wire.recreate_objects(literal)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SerializerBase) and other.serializer_id == self.serializer_id

    def __hash__(self) -> int:
        return self.serializer_id

    def __repr__(self) -> str:
        return f"<meshrpc.serializers {self.name} serializer id={self.serializer_id}>"


class SerpentSerializer(SerializerBase):
    serializer_id = 1
    name = "serpent"


class MarshalSerializer(SerializerBase):
    serializer_id = 2
    name = "marshal"


class JsonSerializer(SerializerBase):
    serializer_id = 3
    name = "json"


class MsgpackSerializer(SerializerBase):
    serializer_id = 4
    name = "msgpack"


#: name -> serializer, id -> serializer (msgpack when the msgpack package is installed)
serializers: dict[str, SerializerBase] = {}
for _cls in (SerpentSerializer, MarshalSerializer, JsonSerializer, MsgpackSerializer):
    if _cls.serializer_id in _wire.BY_ID:
        serializers[_cls.name] = _cls()
serializers_by_id: dict[int, SerializerBase] = {s.serializer_id: s for s in serializers.values()}

__all__ = ["JsonSerializer", "MarshalSerializer", "MsgpackSerializer", "SerializerBase", "SerpentSerializer",
           "serializers", "serializers_by_id"]
