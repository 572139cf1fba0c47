"""The calling side: `Proxy`, `BatchProxy`, `SerializedBlob` (Pyro5's `client` module names)."""

from ..blob import SerializedBlob
from .batch import BatchProxy
from .proxy import Proxy

__all__ = ["BatchProxy", "Proxy", "SerializedBlob"]
