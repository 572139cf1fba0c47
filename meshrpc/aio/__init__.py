"""meshrpc for asyncio: `Proxy` and `Daemon` that run on the caller's event loop (docs/asyncio.md).

    import meshrpc.aio
    async with meshrpc.aio.Proxy("PYRONAME:thermostat") as thermostat:
        print(await thermostat.read())

Both drive the same sans-I/O session core (meshrpc.wire.session) as the threaded meshrpc.Proxy and
meshrpc.Daemon, and share the process's settings, mesh registry and Zeroconf instance with them.
"""

from __future__ import annotations

from .daemon import Daemon, nonblocking
from .proxy import AsyncStreamIterator, BatchProxy, Proxy, RemoteAttribute
from .resolve import resolve

__all__ = ["AsyncStreamIterator", "BatchProxy", "Daemon", "Proxy", "RemoteAttribute", "nonblocking", "resolve"]
