"""Timings and limits fixed by design: the one home of those that are not Settings.

A value belongs here when changing it would not suit one deployment better than another (it follows
from a protocol, a guarantee or a measurement), so it is no knob; each says why it has its value.
User-tunable timings and limits are Settings fields (config.py, documented in docs/configuration.md);
protocol values, which a peer must agree on, are in wire/constants.py. Modules import these names once
(`from ..limits import NAME`), so a per-call read costs what a module constant costs; a test that
changes one patches the name in the module that uses it.
"""

from __future__ import annotations

# --- the threaded daemon (server/connections.py, server/pool.py) and the aio daemon (aio/daemon.py)
HOUSEKEEPING_INTERVAL = 1.0  # seconds between stream expiry sweeps: stream lifetimes are whole seconds
SHUTDOWN_GRACE = 5.0  # seconds close() waits for calls in progress (a call may have asked for the shutdown)
# seconds a stopping request loop answers late requests at least (some are on the way), counted from the
# stop and from the last answer of a call in progress (its client may call again at once)
SHUTDOWN_DRAIN_MIN = 0.05
IDLE_WORKER_EXIT = 60.0  # seconds an idle worker thread waits before it ends: rare bursts keep their threads

# --- proxies and name lookups (client/, aio/, core.py, nameserver.py)
RECONNECT_PAUSE = 2.0  # seconds between attempts of _pyroReconnect: Pyro5's pace, which its programs expect
MIN_ATTEMPT = 0.05  # seconds: an attempt at the very end of the recovery budget still gets a chance
# seconds between lookups while resolve(), lookup() or yplookup() wait for a name (Pyro5's delay_time):
# short against a person waiting, long against a name server answering other clients
NAME_WAIT_PAUSE = 0.1
REGISTRY_RECHECK = 0.5  # seconds: aio resolve asks the registry again at least this often (belt and braces)
