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
# seconds an aio TLS daemon's listener waits after a failed accept (out of file descriptors: accepting again at
# once would fail again at once), as asyncio's own servers do
ACCEPT_RETRY_PAUSE = 1.0
# seconds between looks at a connection whose first bytes are only part of the plain protocol's tag (a client
# that sent 1-3 bytes and waits): the bytes stay readable, so waiting for readability would not wait
PEEK_RETRY_PAUSE = 0.05

# keep-alive probes before a silent peer counts as gone (transport/sockets.py notice_dead_peer; the time they
# take is the DEAD_PEER_TIMEOUT setting): six, so that one or two lost on a lossy link end nothing
DEAD_PEER_PROBES = 6
# a TCP receiver may hold its acknowledgement this long when it has nothing to send back (Linux's
# TCP_DELACK_MAX, Windows' delayed ACK): silent_peer_check counts no quiet shorter than this as silence,
# whatever the proxy's timeout (a oneway call gets no reply for its ACK to ride on)
ACK_DELAY_MAX = 0.2

# --- proxies and name lookups (client/, aio/, core.py, nameserver.py)
RECONNECT_PAUSE = 2.0  # seconds between attempts of _pyroReconnect: Pyro5's pace, which its programs expect
MIN_ATTEMPT = 0.05  # seconds: an attempt at the very end of the recovery budget still gets a chance
# seconds between lookups while resolve(), lookup() or yplookup() wait for a name (Pyro5's delay_time):
# short against a person waiting, long against a name server answering other clients
NAME_WAIT_PAUSE = 0.1
REGISTRY_RECHECK = 0.5  # seconds: aio resolve asks the registry again at least this often (belt and braces)

# --- the fallback name server (naming/, docs/nameserver.md)
# input limits: a bad or hostile client gets an error, the name server stays small and responsive
NS_MAX_NAME_LENGTH = 1024
NS_MAX_URI_LENGTH = 2048
NS_MAX_TAGS = 64
NS_MAX_TAG_LENGTH = 256
NS_MAX_TAGS_TOTAL = 4096  # characters of all tags of one entry together
NS_MAX_ENTRIES = 100_000
# regex filters (list/remove regex=...), saferegex.py: linear time, bounded memory
MAX_REGEX_LENGTH = 256
MAX_REGEX_STATES = 2000
REGEX_TIME_BUDGET = 1.0  # seconds one list()/remove() may spend matching
REGEX_DFA_STATES = 1000  # cached DFA states per compiled pattern (then the cache starts over)
REGEX_DFA_TRANSITIONS = 256  # cached steps per DFA state (more are computed each time)
SQLITE_BUSY_TIMEOUT_MS = 5000  # how long sqlite waits for another connection's lock before it fails
# broadcast discovery: Pyro5's pace, so that mixed networks behave alike
NS_BROADCAST_TRIES = 3
NS_BROADCAST_INTERVAL = 0.7  # seconds to wait for a reply after each round of queries
NS_BROADCAST_POLL = 1.0  # seconds the responder thread waits before checking whether it was closed
# autoclean (its interval and misses are Settings: NS_AUTOCLEAN, NS_AUTOCLEAN_MISSES)
NS_AUTOCLEAN_MIN = 0.05  # seconds: the shortest sweep interval accepted (a sweep must not run back to back)
NS_AUTOCLEAN_PROBE_TIMEOUT = 2.0  # seconds one probe may take
NS_AUTOCLEAN_CONCURRENCY = 8  # probes at once: a sweep of many daemons takes a few probe timeouts, not one each
NS_RESOLVE_MAX_HOPS = 3  # a name may map to another PYRONAME/PYROMETA URI, this many times (no loops)
NS_REGISTRAR_CLOSE_TIMEOUT = 2.0  # seconds a daemon's close() spends withdrawing its names at most

# --- events (events/)
EVENTS_SERVER_POLL = 0.05  # seconds between questions to the event server while waiting for subscribers
EVENTS_ROUTE_CACHE_MAX = 4096  # subjects whose subscribers are remembered; then the cache starts over
EVENTS_ABSENT_MAX = 1000  # departed subscribers remembered (for at most MESH_DORMANT_KEEP seconds)

# --- mesh discovery (mesh/)
# A service the browser reports whose TXT is not cached (its answer was lost) is asked for: a TXT
# question (one-shot, oneshot.py) this long after the report, then again with back-off
# (MESH_QUERY_BACKOFF_*) until MESH_TXT_QUERY_ROUNDS questions went unanswered; a live node's heartbeat
# digest (anti-entropy in the registry) keeps asking for it after that, for as long as the node lives.
MESH_TXT_FIRST_QUERY = 0.2
MESH_TXT_QUERY_ROUNDS = 8
MESH_QUESTIONS_BYTES = 1200  # questions per packet: well inside one 1460-byte datagram
MESH_INDEX_TTL = 120  # seconds: index pages are fetched on demand, not kept
# Cold start (RFC 6762 5.1, 6.7): one PTR query from an ephemeral port per interface; responders
# answer it by unicast to that port at once. The browser's own first query asks for unicast replies
# to port 5353, which the kernel hands to just one of the host's mDNS sockets (SO_REUSEPORT: other
# meshrpc processes, avahi), and its later queries are answered by multicast, which a responder
# holds back for up to 1 s after it last multicast the same records.
MESH_ONE_SHOT_LISTEN = 1.0  # seconds the one-shot sockets wait for unicast answers
MESH_ONE_SHOT_RCVBUF = 1 << 20  # a burst of answers from many responders must fit
MESH_RECENT_QUESTION_IDS = 256  # answers carry the id of a question we asked lately
# RFC 6762 10.1: a goodbye takes effect one second after it came. A node without heartbeats (Avahi, Bonjour
# publishing a record in meshrpc's shape) keeps one version for good, so a copy of a record it withdrew, heard
# later than this, is that record published again, not a late copy (meshrpc's own nodes bump the version).
MESH_GOODBYE_GRACE = 1.0
NETWORKS_CACHE_TTL = 2.0  # seconds: interfaces change rarely, and a stale answer only costs a retry

# --- the wire: the reads of transport/sockets.py, large frames (wire/frame.py), the key proof
# reads of up to 64 KiB stay in malloc's small-block range (bigger buffers cost an mmap and munmap
# per read); a frame known to be larger is read in chunks of up to RECV_MAX until its reader gives it
# a buffer of its own (wire/frame.py FrameReader.receive_buffer), which is filled with recv_into
RECV_CHUNK = 64 * 1024
RECV_MAX = 256 * 1024
# while at least twice LOW_WATER bytes of a large frame are still to come, a read returns only once
# LOW_WATER bytes are in (SO_RCVLOWAT): 10 MiB take about twenty reads and wake-ups instead of one per
# burst of segments (~128 KiB on loopback). Never closer to the frame's end: Linux wakes a blocking
# read for LOW_WATER bytes beyond those it took already, which may be more than the frame has left
LOW_WATER = 1024 * 1024
# a frame at least this big is read into a buffer of its own (FrameReader.receive_buffer, filled with
# recv_into): no growing buffer, and its out-of-band blobs are copied out of it once
LARGE_FRAME = 256 * 1024
# ...once the peer has sent at least 1/LARGE_FRAME_PROOF of it: a header alone (announcing up to
# MAX_MESSAGE_SIZE) never makes the reader hold more than that many times what really came
LARGE_FRAME_PROOF = 4
# a frame's own buffer is kept for the next large frame (fresh memory costs a page fault per 4 KiB)
# up to this size: a daemon drops it when the connection goes idle (FrameReader.release_spare), a
# proxy keeps it while it is connected
SPARE_MAX = 16 * 1024 * 1024
# a compressed request up to this size is inflated on the asyncio daemon's loop (zlib's ratio is at most
# ~1:1032: about 1 MiB out, a few ms); a larger one on a worker thread, so that a zip bomb (0.5 MB in,
# 512 MiB out: 1.4 s of inflating) holds up its own connection, not the loop and every other client
INFLATE_ON_LOOP_MAX = 1024
# threads that inflate those larger ones, apart from any other work (the asyncio daemon's own pool, the
# asyncio proxies' one per process): an inflate waits for no method (a plain method that calls an
# `async def` one of its own daemon held the thread its request needed) and for no code of the program
# (a loop's default executor); zlib runs without the GIL, so about one per core
INFLATE_THREADS = 2
KEY_REPLAY_CACHE_MAX = 65536  # handshake proofs a daemon remembers within KEY_WINDOW (replays are refused)

# --- the gateway (gateway/, docs/gateway.md; its tunable limits are GATEWAY_* Settings)
GATEWAY_CONNECTIONS_PER_SERVICE = 4  # aio backend: connections opened to one daemon while each has a call in flight
GATEWAY_MAX_TRACKED_CLIENTS = 10000  # rate-limit buckets kept: the oldest go first, so memory stays bounded
GATEWAY_LOOKUP_CONCURRENCY = 4  # name lookups beyond the mesh (name server) at once: unknown names cannot pile up

# --- the etcd registry (etcd/, docs/etcd.md)
ETCD_VALUE_MAX = 16384  # bytes of one value: no packet to fit in, but still bounded
ETCD_TXN_OPS = 100  # operations per transaction (etcd refuses more than --max-txn-ops, 128 by default)

# --- the command line (cli/): the defaults of its --timeout options and its waits
CLI_CALL_TIMEOUT = 10.0  # `meshrpc call` and `describe`: seconds to wait for the daemon
CLI_NS_TIMEOUT = 5.0  # seconds the name-server commands (register, remove, ...) wait for the name server
CLI_BROWSE_TIMEOUT = 2.0  # seconds a one-shot browse (or list, yplookup) listens at most
CLI_BROWSE_SETTLE = 0.3  # seconds without news after which a one-shot browse stops listening
CLI_EXEC_TIMEOUT = 60.0  # seconds a `browse --exec` handler may run before it is stopped
CLI_DEMO_READY_TIMEOUT = 15.0  # seconds for the demo's daemons to start and be seen on the mesh

# --- Pyro5's socketutil face
LISTEN_BACKLOG = 100  # socketutil.create_socket(bind=...)'s listen backlog, as Pyro5's
