"""A blocking meshrpc call made on a thread that runs an asyncio event loop is refused, with a clear error.

It would freeze the loop for the whole call, and deadlock when the callee is served (or the reply is
awaited) by that same loop. Checked by the threaded Proxy before every call and by Daemon.requestLoop;
costs a dictionary lookup when asyncio was never imported.
"""

from __future__ import annotations

import sys


def refuse_in_running_loop(what: str) -> None:
    asyncio = sys.modules.get("asyncio")  # not imported: no loop can be running
    if asyncio is not None and asyncio.events._get_running_loop() is not None:
        raise RuntimeError(
            f"{what} blocks, and this thread runs an asyncio event loop: use meshrpc.aio instead "
            f"(meshrpc.aio.Proxy: `await proxy.method(...)`; meshrpc.aio.Daemon: `await daemon.serve_forever()`), "
            f"or run the blocking call in a thread: `await asyncio.to_thread(...)` (docs/asyncio.md)")
