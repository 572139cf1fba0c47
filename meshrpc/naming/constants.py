"""Every limit and timing of the name server, named once (docs/nameserver.md explains them)."""

from __future__ import annotations

from ..wire.constants import DAEMON_OBJECT_ID as DAEMON_NAME  # noqa: F401 (its one home is wire/constants.py)

NAMESERVER_NAME = "Pyro.NameServer"  # object id and registered name, as in Pyro5
NAMESERVER_METADATA = frozenset({"class:Pyro5.nameserver.NameServer"})  # Pyro5 tags its own entry so

# input limits: a bad or hostile client gets an error, the name server stays small and responsive
MAX_NAME_LENGTH = 1024
MAX_URI_LENGTH = 2048
MAX_TAGS = 64
MAX_TAG_LENGTH = 256
MAX_TAGS_TOTAL = 4096  # characters of all tags of one entry together
MAX_ENTRIES = 100_000

# regex filters (list/remove regex=...): see saferegex.py
MAX_REGEX_LENGTH = 256
MAX_REGEX_STATES = 2000
REGEX_TIME_BUDGET = 1.0  # seconds one list()/remove() may spend matching
REGEX_DFA_STATES = 1000  # cached DFA states per compiled pattern (then the cache starts over)
REGEX_DFA_TRANSITIONS = 256  # cached steps per DFA state (more are computed each time)

# sqlite
SQLITE_BUSY_TIMEOUT_MS = 5000

# broadcast discovery (Pyro5's protocol and pace)
BROADCAST_REQUEST = b"GET_NSURI"
BROADCAST_TRIES = 3
BROADCAST_INTERVAL = 0.7  # seconds to wait for a reply after each round of queries
BROADCAST_MAX_DATAGRAM = 100  # Pyro5 reads 100 bytes; GET_NSURI is 9
BROADCAST_POLL = 1.0  # seconds the responder thread waits before checking whether it was closed

# autoclean
AUTOCLEAN_DEFAULT = 0.0  # seconds between sweeps; 0 = off (Pyro5's default too)
AUTOCLEAN_MIN = 0.05
AUTOCLEAN_MISSES_DEFAULT = 3  # consecutive failed probes before a daemon's entries go
AUTOCLEAN_PROBE_TIMEOUT = 2.0  # seconds one probe may take
AUTOCLEAN_CONCURRENCY = 8

# locate_ns / resolve_ns
RESOLVE_MAX_HOPS = 3  # a name may map to another PYRONAME/PYROMETA URI, this many times
