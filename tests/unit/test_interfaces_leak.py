"""Looking at the interfaces every few seconds for days must not grow the process.

netifaces-plus 0.12's interfaces() leaks the names it returns (about 90 bytes per interface and call),
and the mesh's interface check asks every MESH_INTERFACE_CHECK_INTERVAL (5 s) in every process that
announces or browses: about 8 MB a day on a host with five interfaces, found by tools/soak_home.py
(tracemalloc in its hub: meshrpc/transport/interfaces.py's loop over the names kept growing).
transport.interfaces.interface_names asks netifaces again only when the kernel's list changed.
"""

from __future__ import annotations

import gc
import tracemalloc

from meshrpc.mesh import net
from meshrpc.transport import interfaces

CALLS = 3000


def test_reading_the_interfaces_often_keeps_no_memory() -> None:
    list(interfaces.ipv4_interface_infos())  # the first look: whatever it keeps, it keeps once
    net.local_hosts()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(CALLS):
            list(interfaces.ipv4_interface_infos())
            interfaces.ipv4_addresses()
        net.local_hosts()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename") if d.size_diff > 0)
    # (before: 3000 x 2 calls x N interfaces' names, some 90 bytes each: over 1 MB with 4 interfaces)
    assert grown < 64 * 1024, [str(d) for d in after.compare_to(before, "lineno")[:5]]
