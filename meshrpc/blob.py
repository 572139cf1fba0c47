"""SerializedBlob: a call argument that stays serialized, for gateways and dispatchers."""

from __future__ import annotations

from typing import Any


class SerializedBlob:
    """Pass `SerializedBlob(info, data)` as the only argument of a call: `data` (the call's arguments,
    a sequence) is serialized once by the sender; a receiving daemon hands the method a blob whose
    `deserialized()` decodes it on demand, and which can be forwarded without decoding.
    `info` is a small marshallable description (an id or a name)."""

    def __init__(self, info: Any, data: Any, is_blob: bool = False, serializer_id: int = 0) -> None:
        self.info = info
        if is_blob and hasattr(data, "serializer_id") and not isinstance(data, (bytes, bytearray, memoryview)):
            # a meshrpc.protocol message (Pyro5 programs pass those): its serialized INVOKE payload
            serializer_id = data.serializer_id
            data = bytes(getattr(data, "payload", None) or data.data)
        self._data = data
        self._contains_blob = is_blob  # data is an already serialized INVOKE payload
        self._serializer_id = serializer_id

    def deserialized(self) -> Any:
        """The call arguments carried by this blob."""
        if not self._contains_blob:
            return self._data
        from .wire.serializers import by_id
        return by_id(self._serializer_id).split_call(self._data)[2]
