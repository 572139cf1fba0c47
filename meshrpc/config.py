"""One typed settings object: every default, timing and limit of meshrpc is named here once.

`Settings()` holds the documented defaults; `Settings.from_env()` applies `MESHRPC_<ITEM>` environment
variables on top. `meshrpc.config` is the process-wide default instance: daemons and proxies copy it
when they are created (or take their own `settings=`), so nothing reads a global at every call site.
The configuration reference in docs/ is generated from the field docs below.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .errors import ConfigError
from .wire.constants import MESH_TXT_ADVISED_MAX, NS_DEFAULT_PORT

ENV_PREFIX = "MESHRPC_"
PYRO5_ENV_PREFIX = "PYRO_"  # read for the settings Pyro5 has too, when no MESHRPC_ variable is set
PYRO5_SETTINGS = frozenset({
    "HOST", "NS_HOST", "NS_PORT", "NS_BCPORT", "NS_BCHOST", "NS_AUTOCLEAN", "NS_LOOKUP_DELAY", "NATHOST", "NATPORT",
    "COMPRESSION", "SERVERTYPE", "COMMTIMEOUT", "POLLTIMEOUT", "MAX_RETRIES", "SOCK_REUSE", "SOCK_NODELAY",
    "DETAILED_TRACEBACK", "THREADPOOL_SIZE", "THREADPOOL_SIZE_MIN", "MAX_MESSAGE_SIZE", "BROADCAST_ADDRS",
    "PREFER_IP_VERSION", "SERIALIZER", "SERPENT_BYTES_REPR", "ITER_STREAMING", "ITER_STREAM_LIFETIME",
    "ITER_STREAM_LINGER", "LOGFILE", "LOGLEVEL", "LOGWIRE", "SSL", "SSL_SERVERCERT", "SSL_SERVERKEY",
    "SSL_SERVERKEYPASSWD", "SSL_REQUIRECLIENTCERT", "SSL_CLIENTCERT", "SSL_CLIENTKEY", "SSL_CLIENTKEYPASSWD",
    "SSL_CACERTS",
})
ENV_NOT_SETTINGS = "MESHRPC_TEST_"  # the test suite's own knobs (MESHRPC_TEST_SOAK_SECONDS...), not settings

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass
class Settings:
    # --- network
    HOST: str = field(default="localhost", metadata=_doc(
        "Address a daemon binds by default. `localhost` keeps the daemon and its discovery traffic on "
        "this machine; use `0.0.0.0` (or an address) to serve the LAN."))
    NATHOST: str | None = field(default=None, metadata=_doc(
        "Host name or address published in URIs instead of the bound one (daemon behind NAT); None "
        "(Pyro5's default, also for an empty value) publishes the bound one."))
    NATPORT: int = field(default=0, metadata=_doc(
        "Port published in URIs instead of the bound one; 0 means the bound port."))
    SOCK_REUSE: bool = field(default=True, metadata=_doc(
        "Set SO_REUSEADDR on server sockets so a restarted daemon can bind its port at once."))
    SOCK_NODELAY: bool = field(default=True, metadata=_doc(
        "Set TCP_NODELAY on connections (small calls are latency bound)."))
    # --- wire
    SERIALIZER: str = field(default="serpent", metadata=_doc(
        "Serializer proxies use: serpent, json, marshal or msgpack. Daemons accept all of them."))
    COMPRESSION: bool = field(default=False, metadata=_doc(
        "Compress request and response payloads with zlib (worth it on slow links only)."))
    COMPRESSION_MIN_SIZE: int = field(default=256, metadata=_doc(
        "Payloads smaller than this many bytes are never compressed."))
    MAX_MESSAGE_SIZE: int = field(default=1024 ** 3, metadata=_doc(
        "Largest message (annotations plus payload, in bytes) sent or accepted; checked before "
        "anything is allocated. A compressed payload counts at its inflated size."))
    PROTOCOL_ANNOTATIONS_MAX: int = field(default=64, metadata=_doc(
        "Largest number of annotations accepted in one message."))
    SERPENT_BINARY: bool = field(default=True, metadata=_doc(
        "Between meshrpc peers, send serpent messages whose values are plain (None, bool, int, float, "
        "str, and tuples, lists, dicts and sets of them) in marshal's binary form, which decodes "
        "several times faster; the receiver gets exactly serpent's values. Pyro5 peers always get "
        "serpent text; 0 sends text to everyone."))
    # --- timeouts
    COMMTIMEOUT: float = field(default=0.0, metadata=_doc(
        "Seconds a proxy waits for connect and for each reply; 0 waits forever."))
    CONNECT_TIMEOUT: float = field(default=10.0, metadata=_doc(
        "Seconds a proxy waits for a TCP connection and handshake when COMMTIMEOUT is 0."))
    POLLTIMEOUT: float = field(default=2.0, metadata=_doc(
        "Seconds the daemon's request loop waits before it runs housekeeping and checks its loop "
        "condition."))
    MAX_RETRIES: int = field(default=0, metadata=_doc(
        "Times a proxy re-sends a call after a connection failure, idempotent or not (Pyro5 "
        "semantics; opt-in)."))
    SPIN_WAIT: float = field(default=0.0, metadata=_doc(
        "Seconds a thread waiting for a message polls without sleeping; 0 (the default): it sleeps. "
        "An opt-in for latency (e.g. 0.0002): a spin saves the scheduler wake-up of a call, but "
        "burns a core while the peer works, so with both sides spinning a small call costs more CPU "
        "than without (about 15-25 us more on loopback, docs/performance.md); worth it only with a "
        "core to spare. Off on single-core machines. A connection spins only while its recent spins "
        "saw messages arrive within SPIN_LATE_SHARE of this; after SPIN_SLOW_LIMIT slow ones it stops "
        "and re-checks one wait in SPIN_RECHECK_EVERY; a new connection's first SPIN_START_AFTER waits "
        "never spin. At most one thread per process spins at a time. The asyncio proxy spins the same "
        "way for the reply of a lone call, and only while its event loop has nothing else ready (no "
        "callback, no due timer, no other readable socket); not on uvloop or other non-selector loops."))
    SPIN_SLOW_LIMIT: int = field(default=4, metadata=_doc(
        "Slow spins in a row (nothing came within SPIN_WAIT, or only late in it) after which a "
        "connection stops spinning: spaced calls then cost no spinning CPU."))
    SPIN_RECHECK_EVERY: int = field(default=64, metadata=_doc(
        "While a connection's spinning is off, one wait in this many spins anyway, to notice that "
        "messages came fast again (one fast spin turns spinning back on)."))
    SPIN_LATE_SHARE: float = field(default=0.5, metadata=_doc(
        "A message that arrives after this share of SPIN_WAIT counts as slow: the spin before it cost "
        "more CPU than the scheduler wake-up it saved."))
    SPIN_START_AFTER: int = field(default=3, metadata=_doc(
        "Waits of a new connection that never spin: its handshake and first calls. Their answers come "
        "after a thread hand-off and a handshake's parsing, later than SPIN_WAIT, and a spin on a "
        "core the peer shares keeps the peer from answering (a connect plus first call took twice "
        "as long)."))
    SERVER_SPIN: bool = field(default=True, metadata=_doc(
        "With SPIN_WAIT > 0, let daemon workers spin-wait for a client's next request too, while no "
        "other call runs and no other thread of the daemon waits (saves a scheduler wake-up per call "
        "on a machine with a core to spare); 0: only proxies spin."))
    # --- resilience
    REBIND_TIMEOUT: float = field(default=10.0, metadata=_doc(
        "Seconds a proxy keeps trying to re-resolve and reconnect a PYRONAME/PYROMETA service for one "
        "call before it raises (handshakes a provider never answers: the proxy's timeout, when it "
        "has one)."))
    REBIND_BACKOFF_MIN: float = field(default=0.05, metadata=_doc(
        "First pause between reconnection attempts (doubles, with jitter, up to REBIND_BACKOFF_MAX)."))
    REBIND_BACKOFF_MAX: float = field(default=1.0, metadata=_doc(
        "Longest pause between reconnection attempts."))
    CONNECT_ATTEMPT_TIMEOUT: float = field(default=0.2, metadata=_doc(
        "Seconds the first TCP connect attempt to a provider resolved by name (PYRONAME/PYROMETA) may "
        "take before it is abandoned and made again on a fresh socket (a lost SYN costs this, not "
        "TCP's 1 s/3 s/7 s backoff); docs/resilience.md."))
    CONNECT_ATTEMPT_GROWTH: float = field(default=1.5, metadata=_doc(
        "Each further connect attempt to the same provider within one call may take this many times "
        "longer than the last, up to CONNECT_ATTEMPT_TIMEOUT_MAX."))
    CONNECT_ATTEMPT_TIMEOUT_MAX: float = field(default=1.0, metadata=_doc(
        "Longest connect attempt to a provider resolved by name; never more than the proxy's timeout "
        "(COMMTIMEOUT, else CONNECT_TIMEOUT) or what is left of REBIND_TIMEOUT."))
    HANDSHAKE_ATTEMPT_TIMEOUT: float = field(default=2.0, metadata=_doc(
        "Seconds the handshake (and TLS handshake) of a connection to a provider resolved by name may "
        "take in a first attempt (TCP retransmits lost data several times within it); each further "
        "attempt to the same provider CONNECT_ATTEMPT_GROWTH times longer, up to the proxy's timeout "
        "(COMMTIMEOUT, else CONNECT_TIMEOUT) and never beyond what is left of REBIND_TIMEOUT (of the "
        "proxy's timeout, when it has one: a provider that never answers)."))
    # --- server
    THREADPOOL_SIZE: int = field(default=128, metadata=_doc(
        "Most worker threads a daemon runs calls on. Idle connections hold no worker, so this "
        "bounds concurrency, not the number of connected proxies."))
    AIO_EXECUTOR_SIZE: int = field(default=32, metadata=_doc(
        "Most threads an asyncio daemon (meshrpc.aio.Daemon) runs plain, non-async methods on; "
        "`async def` methods run on its loop and need none."))
    AIO_CORK_BYTES: int = field(default=16384, metadata=_doc(
        "meshrpc.aio: messages written in one turn of the event loop after its first go out together, "
        "in one system call per this many bytes (and at the end of the turn): side-by-side calls or "
        "replies share system calls, and the peer starts on the first ones while the rest are written."))
    AIO_RECEIVE_BUFFER: int = field(default=262144, metadata=_doc(
        "meshrpc.aio: bytes read from a socket at most at once, into one buffer per event loop that "
        "the loop's connections share (no buffer allocated per read, none held by idle connections)."))
    AIO_REPLY_WAIT: float = field(default=0.005, metadata=_doc(
        "Seconds an asyncio proxy call with nothing else in flight may sleep in its event loop's own "
        "selector for its reply, so that a quick reply is read at once instead of through a read "
        "callback and a second turn of the loop. Only while the loop has nothing else ready; any other "
        "socket, callback (also from another thread) or due timer ends it at once. Not a spin: no CPU "
        "while it waits. An asyncio daemon waits the same way for a lone client's next request once all "
        "its calls are answered. 0 turns both off."))
    FUTURE_WORKERS: int = field(default=4, metadata=_doc(
        "Threads (for the whole process) that run meshrpc.Future callables and the then/iferror "
        "chains of asynchronous calls; the calls themselves run on one shared asyncio loop thread."))
    WORKER_LINGER: float = field(default=0.25, metadata=_doc(
        "Seconds a worker keeps watching a connection after a reply before it hands the "
        "connection back to the daemon's selector (saves a thread hand-off for chatty clients)."))
    ONEWAY_THREADED: bool = field(default=True, metadata=_doc(
        "Run oneway calls on the worker pool, off the connection's reader, so the calling proxy's "
        "next call need not wait (a connection's oneway calls still run in the order sent); False "
        "runs them inline on the connection's worker."))
    SERVERTYPE: str = field(default="thread", metadata=_doc(
        "Pyro5's server types: `thread` runs calls concurrently on the worker pool; `multiplex` runs "
        "them one at a time (a pool of one worker), for objects that are not thread-safe. Both "
        "serve from one selector loop, so idle connections hold no thread in either."))
    THREADPOOL_SIZE_MIN: int = field(default=4, metadata=_doc(
        "Accepted for Pyro5 programs; no effect: the worker pool starts threads when calls need them."))
    MAX_CONNECTIONS: int = field(default=10000, metadata=_doc(
        "Most client connections a daemon holds at once; more are refused and closed."))
    MAX_CALLS_PER_CONNECTION: int = field(default=10000, metadata=_doc(
        "Most calls one client connection may have a daemon hold at once, so that no client makes it hold "
        "without bound: the asyncio daemon's running calls (pipelined requests of methods that wait, or "
        "wait for a thread), and the oneway calls the threaded daemon queued for a connection (it runs "
        "the others one at a time). While that many are held, that client's further requests are not "
        "read (the threaded daemon's reader runs the oldest queued oneway call meanwhile)."))
    DETAILED_TRACEBACK: bool = field(default=False, metadata=_doc(
        "Include local variables in remote tracebacks (may leak data; debugging only)."))
    # --- streaming
    ITER_STREAMING: bool = field(default=True, metadata=_doc(
        "Return iterators and generators as remote streams; False refuses to return them."))
    ITER_STREAM_LIFETIME: float = field(default=0.0, metadata=_doc(
        "Seconds a remote stream may live at most; 0 means no limit."))
    ITER_STREAM_LINGER: float = field(default=30.0, metadata=_doc(
        "Seconds a stream is kept after its client disconnected, so a reconnecting proxy can go on."))
    MAX_STREAMS_PER_CONNECTION: int = field(default=1000, metadata=_doc(
        "Most open remote streams one connection may hold."))
    # --- name server (fallback)
    NS_HOST: str = field(default="", metadata=_doc(
        "Name server host; empty means: the same as HOST."))
    NS_PORT: int = field(default=NS_DEFAULT_PORT, metadata=_doc("Name server port (Pyro5's default)."))
    NS_BCPORT: int = field(default=9091, metadata=_doc(
        "UDP port of the name server's broadcast responder (Pyro5's default)."))
    NS_BCHOST: str | None = field(default=None, metadata=_doc(
        "Address the name server's broadcast responder binds; None (Pyro5's default, also for an empty "
        "value) means the name server's host."))
    NS_LOOKUP_DELAY: float = field(default=0.0, metadata=_doc(
        "Seconds a name-server lookup of a name that is not registered (yet) keeps retrying before "
        "NamingError (Pyro5's setting; 0 fails at once)."))
    BROADCAST_ADDRS: str = field(default="<broadcast>, 0.0.0.0", metadata=_doc(
        "Accepted for Pyro5 programs; no effect: broadcast name-server discovery asks the broadcast "
        "address of every interface the daemon serves (docs/nameserver.md)."))
    NS_AUTOREGISTER: bool = field(default=True, metadata=_doc(
        "When NS_HOST is set, daemons also register the objects they give a name in that name server "
        "(in the background) and withdraw them on unregister and shutdown."))
    NS_REGISTER_REFRESH: float = field(default=30.0, metadata=_doc(
        "Seconds between a daemon's re-registrations in the name server (so a restarted name server "
        "learns its names back); failed attempts are retried at this pace too."))
    NS_AUTOCLEAN: float = field(default=0.0, metadata=_doc(
        "Seconds between the name server's liveness sweeps of the daemons behind its PYRO entries; "
        "0 turns autoclean off (Pyro5's default)."))
    NS_AUTOCLEAN_MISSES: int = field(default=3, metadata=_doc(
        "Consecutive failed liveness probes after which the name server removes a daemon's entries."))
    # --- etcd registry (docs/etcd.md)
    ETCD_PREFIX: str = field(default="/meshrpc/", metadata=_doc(
        "Key prefix of meshrpc's entries in etcd; each realm lives under `<prefix><realm>/`."))
    ETCD_LEASE_TTL: int = field(default=3, metadata=_doc(
        "Seconds of the lease a daemon's etcd keys are bound to: after a crash (no goodbye) its names "
        "are gone within this time (plus up to 0.5 s of etcd's expiry check). etcd's minimum is about "
        "1.5 election timeouts."))
    ETCD_KEEPALIVE_INTERVAL: float = field(default=1.0, metadata=_doc(
        "Seconds between a daemon's lease keep-alives (keep it under a third of ETCD_LEASE_TTL): the only "
        "etcd writes of a daemon whose objects do not change."))
    ETCD_TIMEOUT: float = field(default=2.0, metadata=_doc(
        "Seconds one etcd request may take on one member before the next member is tried."))
    ETCD_WATCH_IDLE: float = field(default=5.0, metadata=_doc(
        "Seconds a watch may stay silent before the mirror re-establishes it (from the revision it has): "
        "how long a silently cut connection to etcd goes unnoticed."))
    ETCD_RETRY_INTERVAL: float = field(default=0.5, metadata=_doc(
        "Seconds between attempts to reach etcd again after every member failed (readers and writers)."))
    ETCD_USER: str = field(default="", metadata=_doc(
        "etcd user name (etcd auth); empty: no authentication."))
    ETCD_PASSWORD: str = field(default="", metadata=_doc("Password of ETCD_USER."))
    ETCD_CACERT: str = field(default="", metadata=_doc(
        "CA certificate file (PEM) that signed the etcd members' certificates (etcds:// endpoints); empty: "
        "the system's CAs."))
    ETCD_CERT: str = field(default="", metadata=_doc(
        "Client certificate file (PEM) for etcd members that require client certificates (etcds://)."))
    ETCD_CERT_KEY: str = field(default="", metadata=_doc("Private key file (PEM) of ETCD_CERT."))
    # --- mesh
    REALM: str = field(default="default", metadata=_doc(
        "Mesh realm: processes only see announcements of their own realm, so several meshes can "
        "share a LAN."))
    INTERFACES: str = field(default="", metadata=_doc(
        "Comma-separated interface addresses for mDNS; empty means: follow the daemon's host "
        "(localhost -> loopback only, 0.0.0.0 -> every non-loopback interface)."))
    LOOKUP_TIMEOUT: float = field(default=3.0, metadata=_doc(
        "Seconds a PYRONAME/PYROMETA lookup waits for an answer before NamingError."))
    RESOLVE_PREFER_WAIT: float = field(default=0.1, metadata=_doc(
        "Seconds the first RESOLVE source has to answer (the mesh answers from memory) before the "
        "later ones are asked too; a later one's answer is then taken when it comes first. A name "
        "registered only in a name server (by a Pyro5 program) costs about this, not LOOKUP_TIMEOUT."))
    RESOLVE: str = field(default="mesh,ns", metadata=_doc(
        "Sources that resolve PYRONAME/PYROMETA, in order, comma separated: `mesh` (or `mdns`), "
        "`etcd://host:port,host:port,...` (an etcd cluster; `etcds://` for TLS) and `ns`. The mesh and "
        "etcd together are one provider set. Daemons also register their names in the etcd cluster "
        "named here, and skip multicast when `mesh` is not named (docs/etcd.md)."))
    MESH_NODE_ID: str = field(default="", metadata=_doc(
        "Stable mesh node id of a daemon (letters, digits, '-', at most 32); a restart with the same "
        "id replaces the old announcements at once. Empty: a random id per daemon."))
    MESH_HEARTBEAT_INTERVAL: float = field(default=1.0, metadata=_doc(
        "Seconds between a daemon's heartbeats, one small multicast record per daemon that keeps all "
        "its objects alive in other registries."))
    MESH_LIVENESS_WINDOW: float = field(default=3.5, metadata=_doc(
        "Shortest time (s) without a heartbeat or announcement after which a daemon's objects "
        "disappear from registries: the window on a loss-free network (keep above twice "
        "MESH_HEARTBEAT_INTERVAL). It grows with the heartbeat loss a registry measures, up to "
        "MESH_LIVENESS_WINDOW_MAX. Also the heartbeat record's TTL."))
    MESH_LIVENESS_WINDOW_MAX: float = field(default=15.0, metadata=_doc(
        "Longest liveness window (s), reached on very lossy networks; a daemon that is gone but whose "
        "port still refuses connections is noticed sooner (MESH_SUSPECT_AFTER)."))
    MESH_SILENCE_ODDS: float = field(default=1e-6, metadata=_doc(
        "Accepted odds that every heartbeat of a live daemon is lost for a whole liveness window: with "
        "the loss measured from heartbeat sequence gaps it sets how many missed heartbeats mean gone "
        "(20% loss: about 9)."))
    MESH_SUSPECT_AFTER: float = field(default=2.2, metadata=_doc(
        "Seconds of silence after which a daemon is suspected: a registry checks it with a TCP connect "
        "(MESH_PROBE_TIMEOUT), again every heartbeat interval while silent. Accepted: alive; refused: "
        "its objects are gone at once; no answer: the liveness window decides."))
    MESH_SYNC_GRACE: float = field(default=0.3, metadata=_doc(
        "Seconds a daemon's heartbeat digest may disagree with a registry's copy of its objects (an "
        "announcement still on its way) before the registry fetches the daemon's index (anti-entropy)."))
    MESH_QUERY_BACKOFF_MIN: float = field(default=0.5, metadata=_doc(
        "First pause (s) before asking again for records that did not come (missing TXT records, a "
        "daemon's index and the objects it lacks); doubles up to MESH_QUERY_BACKOFF_MAX, and the "
        "asking goes on while the daemon lives. One-shot questions (MESH_ONE_SHOT_QUESTIONS) are "
        "answered at once; multicast answers come at most once a second per record (RFC 6762), so "
        "without one-shot questions a pause under 1 s does not help."))
    MESH_ONE_SHOT_QUESTIONS: bool = field(default=True, metadata=_doc(
        "Ask for missing records with one-shot questions (RFC 6762 6.7: from an ephemeral port, "
        "answered at once by unicast to it, by zeroconf and Avahi alike) instead of multicast "
        "questions, whose answers a responder holds back for up to 1 s after it last multicast them. "
        "Off: multicast questions, for networks that filter unicast answers from port 5353."))
    MESH_QUERY_BACKOFF_MAX: float = field(default=8.0, metadata=_doc(
        "Longest pause (s) between two queries for the same missing records."))
    MESH_ANNOUNCE_REPEATS: int = field(default=2, metadata=_doc(
        "Announcements of a new or changed object sent after zeroconf's own three (at 1 s, then 3 s "
        "after publishing: 1, 2, 4 ... s apart), so that a lossy network rarely loses all of them."))
    MESH_SWEEP_INTERVAL: float = field(default=0.25, metadata=_doc(
        "Seconds between liveness checks of a registry."))
    MESH_SUSPECT_HOLD: float = field(default=1.0, metadata=_doc(
        "Seconds a provider that a proxy could not reach (report_failure) is passed over when choosing "
        "a provider, while another one exists (the only provider is never hidden); also how long a "
        "contested provider that refused its probe stays hidden at least."))
    MESH_DORMANT_KEEP: float = field(default=300.0, metadata=_doc(
        "Seconds an expired entry is kept hidden so it can come back when its daemon is heard again."))
    MESH_TOMBSTONE_KEEP: float = field(default=60.0, metadata=_doc(
        "Seconds a withdrawn entry is remembered so late copies of its announcement are ignored."))
    MESH_MAX_ENTRIES: int = field(default=5000, metadata=_doc(
        "Most entries (live and dormant) a registry holds; beyond it new announcements are refused."))
    MESH_MAX_NODES: int = field(default=1000, metadata=_doc(
        "Most daemons (nodes) a registry tracks; also how many sources of malformed records are "
        "remembered so that each is logged once."))
    MESH_FEED_QUEUE_MAX: int = field(default=10000, metadata=_doc(
        "Most received records waiting to be decoded; more are dropped (flood protection)."))
    MESH_TXT_MAX: int = field(default=MESH_TXT_ADVISED_MAX, metadata=_doc(
        "Largest TXT record (bytes) published or accepted; a publish with more metadata fails with "
        "NamingError."))
    MESH_HOST_TTL: int = field(default=120, metadata=_doc(
        "TTL (s) of published SRV and address records."))
    MESH_OTHER_TTL: int = field(default=4500, metadata=_doc(
        "TTL (s) of published PTR and TXT records (liveness does not depend on it)."))
    MESH_PUBLISH_TIMEOUT: float = field(default=0.5, metadata=_doc(
        "Seconds publish() waits for the first announcement to be handed to the network (and a new "
        "registry for zeroconf's cache)."))
    MESH_GOODBYE_TIMEOUT: float = field(default=1.0, metadata=_doc(
        "Seconds withdraw() and close() wait for goodbye packets to be sent (and shutdown for the "
        "mesh thread)."))
    MESH_PROBE_CONTESTED: bool = field(default=True, metadata=_doc(
        "When a newer provider of a name appears on another daemon, probe the older ones with a TCP "
        "connect and hide them if refused (restart on another host/port replaces at once)."))
    MESH_PROBE_TIMEOUT: float = field(default=0.5, metadata=_doc(
        "Seconds a TCP probe may take: of a contested provider (no answer counts as unreachable) and "
        "of a silent or reported daemon (no answer is no evidence either way)."))
    MESH_PROBE_CONCURRENCY: int = field(default=8, metadata=_doc(
        "Most probes running at once per process; more contested entries are left alone."))
    MESH_INTERFACE_CHECK_INTERVAL: float = field(default=5.0, metadata=_doc(
        "Seconds between checks of the machine's addresses when discovery follows 0.0.0.0."))
    # --- security
    SSL: bool = field(default=False, metadata=_doc(
        "Use TLS (stdlib ssl) on every connection: daemons, the name server included, accept TLS only "
        "(they need SSL_SERVERCERT), proxies connect with TLS and check the daemon's certificate. "
        "See docs/security.md."))
    SSL_SERVERCERT: str = field(default="", metadata=_doc(
        "PEM file with the daemon's certificate (and chain); required on daemons when SSL is on."))
    SSL_SERVERKEY: str = field(default="", metadata=_doc(
        "PEM file with the daemon's private key; empty: the key is in SSL_SERVERCERT."))
    SSL_SERVERKEYPASSWD: str = field(default="", metadata=_doc(
        "Password of an encrypted SSL_SERVERKEY; empty: the key is not encrypted."))
    SSL_CACERTS: str = field(default="", metadata=_doc(
        "CA certificates (a PEM file, or a directory prepared with `openssl rehash`). Proxies then "
        "trust only these for daemons' certificates, instead of the system's store; daemons verify "
        "client certificates with them. A self-signed certificate can be its own CA file."))
    SSL_CLIENTCERT: str = field(default="", metadata=_doc(
        "PEM file with the proxy's certificate (and chain), for daemons that require one "
        "(SSL_REQUIRECLIENTCERT)."))
    SSL_CLIENTKEY: str = field(default="", metadata=_doc(
        "PEM file with the proxy's private key; empty: the key is in SSL_CLIENTCERT."))
    SSL_CLIENTKEYPASSWD: str = field(default="", metadata=_doc(
        "Password of an encrypted SSL_CLIENTKEY; empty: the key is not encrypted."))
    SSL_REQUIRECLIENTCERT: bool = field(default=False, metadata=_doc(
        "Two-way TLS: daemons refuse clients without a certificate signed by one of SSL_CACERTS "
        "(which must then be set)."))
    KEY: str = field(default="", metadata=_doc(
        "Mesh key: a shared secret. When set, mesh announcements are signed and announcements without "
        "a valid signature are ignored, and proxies and daemons (the name server included) prove to "
        "each other that they hold the key at CONNECT; peers without it are refused. Empty: off. "
        "Not encryption: use SSL for that. See docs/security.md."))
    KEY_WINDOW: float = field(default=60.0, metadata=_doc(
        "Seconds a CONNECT's mesh key proof stays valid (allowed clock difference between proxy "
        "and daemon hosts); replays within it are refused by a cache of recent nonces."))
    HANDSHAKE_TIMEOUT: float = field(default=10.0, metadata=_doc(
        "Seconds a new client connection has to complete the TLS handshake (if any) and its CONNECT "
        "message; then the daemon closes it. 0 turns the limit off."))
    IDLE_TIMEOUT: float = field(default=0.0, metadata=_doc(
        "Seconds a daemon keeps a client connection on which nothing was received or sent and no call "
        "runs; then it closes it. 0 (the default, as in Pyro5) keeps idle connections: meshrpc proxies "
        "reconnect transparently after such a close, Pyro5 proxies get ConnectionClosedError."))
    DEAD_PEER_TIMEOUT: float = field(default=60.0, metadata=_doc(
        "Seconds after which a TCP connection whose peer answers nothing at all (host powered off, cable "
        "pulled, a partition) is ended by the kernel: keep-alive probes while it is quiet, and a limit "
        "on data left unacknowledged. A proxy's call waiting on it then fails as maybe delivered "
        "(ReplyLostError; by name, an idempotent one is sent elsewhere) instead of waiting forever, and "
        "a daemon frees a vanished client's connection. A live peer answers the probes, however long "
        "its calls run. Both daemons and both proxies; 0: the system's TCP defaults."))
    SEND_TIMEOUT: float = field(default=30.0, metadata=_doc(
        "Seconds a daemon waits for a client to take more of a reply when the connection's send buffer "
        "is full; then it closes the connection (a client that never reads cannot hold a worker). "
        "Meanwhile the asyncio daemon reads none of that client's requests. 0 waits forever."))
    # --- events (docs/events.md)
    EVENTS_QUEUE_MAX: int = field(default=10000, metadata=_doc(
        "Events a publisher holds for one subscriber that has not taken them yet; when full, the "
        "oldest is dropped and counted (the subscriber sees the gap in the numbers)."))
    EVENTS_BATCH_MAX: int = field(default=1000, metadata=_doc(
        "Most events a publisher sends to one subscriber in one call."))
    EVENTS_DELIVER_TIMEOUT: float = field(default=10.0, metadata=_doc(
        "Seconds a publisher waits for a subscriber to take one batch (its handlers run meanwhile); "
        "then the batch is sent again on a new connection and the subscriber skips what it has."))
    EVENTS_RETAIN_MAX: int = field(default=1000, metadata=_doc(
        "Subjects whose last retained value (publish(..., retain=True)) a publisher or event server "
        "keeps for subscribers that join later; the least recently published go first."))
    EVENTS_SERVER: str = field(default="", metadata=_doc(
        "Central event server to use instead of the mesh (networks without multicast): a URI such "
        "as PYRONAME:Pyro.EventService or PYRO:Pyro.EventService@host:port, or host:port. Empty: no "
        "broker, publishers deliver straight to the subscribers they find on the mesh."))
    EVENTS_LEASE: float = field(default=10.0, metadata=_doc(
        "Seconds an event server keeps a subscription that was not renewed (subscribers renew every "
        "third of it), and keeps trying an unreachable Pyro3-style subscriber."))
    # --- HTTP gateway (`meshrpc gateway`, docs/gateway.md)
    GATEWAY_PORT: int = field(default=8080, metadata=_doc(
        "Port `meshrpc gateway` listens on (Pyro5's gateway default)."))
    GATEWAY_EXPOSE: str = field(default=r"http\.", metadata=_doc(
        "Regular expression (re.match) a name must match to be called through the gateway (Pyro5's "
        "default `http\\.`); `.*` exposes every name. The mesh listing shows every name either way."))
    GATEWAY_KEY: str = field(default="", metadata=_doc(
        "Gateway key: when set, HTTP clients must send it (header X-Pyro-Gateway-Key or parameter $key) "
        "to call services or see the mesh. Required (or TLS) for a gateway listening beyond localhost."))
    GATEWAY_BACKEND: str = field(default="aio", metadata=_doc(
        "How the gateway calls services: `aio` (meshrpc.aio proxies on its event loop, pipelined, no "
        "thread per call) or `threads` (threaded proxies on GATEWAY_WORKERS threads)."))
    GATEWAY_WORKERS: int = field(default=32, metadata=_doc(
        "Threads the gateway's calls run on with GATEWAY_BACKEND=threads (shared by all services); with "
        "`aio`, name-server lookups run on at most 8 of them."))
    GATEWAY_BACKEND_CONCURRENCY: int = field(default=8, metadata=_doc(
        "Calls the gateway runs at once on one service (PYRONAME or tag query); more wait for a slot, so "
        "one slow service holds at most this many workers and never stalls the others."))
    GATEWAY_QUEUE_TIMEOUT: float = field(default=5.0, metadata=_doc(
        "Seconds a gateway request waits for a free slot of its service before it is answered 503."))
    GATEWAY_CALL_TIMEOUT: float = field(default=30.0, metadata=_doc(
        "Seconds the gateway waits for a backend's reply (its proxies' COMMTIMEOUT); then 504."))
    GATEWAY_LOOKUP_WAIT: float = field(default=1.0, metadata=_doc(
        "Seconds the gateway waits for a name it has not heard of on the mesh to be announced (then it "
        "asks the rest of the RESOLVE chain) before answering 404."))
    GATEWAY_MAX_BODY: int = field(default=1024 ** 2, metadata=_doc(
        "Largest request body (bytes) the gateway accepts; larger ones get 413."))
    GATEWAY_RATE: float = field(default=200.0, metadata=_doc(
        "Requests per second one client address may make to the gateway on average (token bucket, "
        "GATEWAY_BURST deep); beyond it 429. 0 turns the limit off."))
    GATEWAY_BURST: int = field(default=400, metadata=_doc(
        "Requests one client address may make at once before GATEWAY_RATE applies."))
    GATEWAY_HEADER_TIMEOUT: float = field(default=10.0, metadata=_doc(
        "Seconds a gateway connection may take to send a request's head (after connecting or after the "
        "previous reply); then it is closed (slow-loris clients hold no more than a socket this long)."))
    GATEWAY_BODY_TIMEOUT: float = field(default=10.0, metadata=_doc(
        "Seconds a gateway client has to send a request's body; then 408."))
    GATEWAY_MAX_CONNECTIONS: int = field(default=1000, metadata=_doc(
        "Client connections the gateway keeps open at once; further ones are closed at once."))
    GATEWAY_STREAM_MAX_ITEMS: int = field(default=10000, metadata=_doc(
        "Items of a streamed (generator) result the gateway collects into its JSON list at most."))
    GATEWAY_SSE_TICK: float = field(default=2.0, metadata=_doc(
        "Seconds between the gateway's event-stream ticks (entry ages and call statistics; they also "
        "keep idle connections open through proxies)."))
    GATEWAY_SSE_QUEUE: int = field(default=1000, metadata=_doc(
        "Events queued for one event-stream subscriber; a subscriber that falls further behind is "
        "disconnected (browsers reconnect and get a fresh snapshot)."))
    PREFER_IP_VERSION: int = field(default=0, metadata=_doc(
        "Accepted for Pyro5 programs; no effect: addresses are used as the system resolves them."))
    SERPENT_BYTES_REPR: bool = field(default=False, metadata=_doc(
        "Accepted for Pyro5 programs; no effect: serpent bytes are sent as Pyro5 peers expect "
        "(base64 dicts), and as real bytes between meshrpc peers."))
    # --- diagnostics
    LOGFILE: str = field(default="", metadata=_doc(
        "Accepted for Pyro5 programs; no effect: meshrpc logs through the `meshrpc` logger, which the "
        "application directs (LOGLEVEL adds a stderr handler when it sets up none)."))
    LOGLEVEL: str = field(default="", metadata=_doc(
        "Level for the `meshrpc` logger (DEBUG, INFO, WARNING...); empty leaves logging to the "
        "application."))
    LOGWIRE: bool = field(default=False, metadata=_doc(
        "Log every frame sent and received at DEBUG level (very verbose)."))

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dataclass_fields__:  # a typo must not be silently ignored
            raise AttributeError(f"unknown setting {name!r}; `python -m meshrpc config` lists them")
        object.__setattr__(self, name, value)

    def reset(self, use_environment: bool = True) -> None:
        """Back to the defaults, then (unless use_environment is False) the environment variables."""
        fresh = type(self).from_env() if use_environment else type(self)()
        for f in fields(self):
            object.__setattr__(self, f.name, getattr(fresh, f.name))

    def dump(self) -> str:
        """The effective settings as text, for diagnostics (`meshrpc config` prints them too)."""
        import platform
        from . import __version__
        from .wire.frame import PROTOCOL_VERSION
        lines = [f"meshrpc version: {__version__}", f"Python version: {platform.python_implementation()} "
                 f"{platform.python_version()} ({platform.system()})", f"Protocol version: {PROTOCOL_VERSION}",
                 "Settings:"]
        lines += [f"{name} = {value}" for name, value in sorted(self.as_dict().items())]
        return "\n".join(lines)

    def copy(self, **changes: Any) -> "Settings":
        """A copy with `changes` applied (checked like environment values)."""
        new = dataclasses.replace(self)
        for key, value in changes.items():
            new.set(key, value)
        return new

    def set(self, key: str, value: Any) -> None:
        """Set one item by name, converting strings to the item's type."""
        known = {f.name: f for f in fields(self)}
        name = key.upper()
        if name not in known:
            raise AttributeError(f"unknown setting {key!r}; `python -m meshrpc config` lists them")
        setattr(self, name, _coerce(name, known[name].type, value))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Defaults with every `MESHRPC_<ITEM>` environment variable applied; ConfigError (one line
        naming every bad variable) for a bad value or a `MESHRPC_*` name that is no setting."""
        settings, problems = cls.from_env_checked(environ)
        if problems:
            raise ConfigError(problems)
        return settings

    @classmethod
    def from_env_checked(cls, environ: Mapping[str, str] | None = None) -> tuple["Settings", list[str]]:
        """(settings, problems): every good `MESHRPC_*` variable applied, a sentence per bad one."""
        environ = os.environ if environ is None else environ
        settings = cls()
        problems = []
        known = {f.name for f in fields(cls)}
        for variable, raw in sorted(environ.items()):
            if not variable.startswith(ENV_PREFIX) or variable.startswith(ENV_NOT_SETTINGS):
                continue
            name = variable[len(ENV_PREFIX):]
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                hint = f"did you mean {ENV_PREFIX}{close[0]}? " if close else ""
                problems.append(f"{variable} is not a meshrpc setting ({hint}`meshrpc config` lists them)")
                continue
            try:
                settings.set(name, raw)
            except ValueError as exc:
                problems.append(f"{variable}={raw!r}: {exc}")
        for f in fields(cls):  # a Pyro5 program's environment, unchanged: PYRO_ names Pyro5 has too
            raw = environ.get(PYRO5_ENV_PREFIX + f.name)
            if raw is not None and f.name in PYRO5_SETTINGS and ENV_PREFIX + f.name not in environ:
                try:
                    settings.set(f.name, raw)
                except ValueError as exc:
                    problems.append(f"{PYRO5_ENV_PREFIX}{f.name}={raw!r}: {exc}")
        return settings, problems

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def reference(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, doc) of every item, for the generated docs and `meshrpc config`."""
        return [(f.name, str(f.type), f.default, f.metadata.get("doc", "")) for f in fields(cls)]


_LOG_LEVELS = ("", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SERIALIZERS = ("serpent", "json", "marshal", "msgpack")


def _check_value(name: str, value: Any) -> str | None:
    """Why value is no good for the setting name (beyond its type), or None."""
    if name == "REALM" and not str(value).strip():
        return ("the realm must not be empty: leave MESHRPC_REALM unset (or --realm out) for the "
                "default realm, 'default'")
    if name == "LOGLEVEL" and str(value).upper() not in _LOG_LEVELS:
        return "use DEBUG, INFO, WARNING, ERROR or CRITICAL (or nothing)"
    if name == "SERIALIZER" and value not in _SERIALIZERS:
        return "use serpent, json, marshal or msgpack"
    if isinstance(value, float) and value < 0:  # seconds: a negative one is a typo, not "off" (that is 0)
        return "seconds must not be negative (0 turns a limit off where the setting says so)"
    return None


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    converted = _convert(name, type_name, value)
    why = _check_value(name, converted)
    if why:
        raise ValueError(f"setting {name}: {why}")
    return converted


def _convert(name: str, type_name: Any, value: Any) -> Any:
    type_name = str(type_name)
    try:
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if type_name == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if type_name == "float":
            return float(value)
        if type_name == "str | None":  # Pyro5's optional host names: None when not given
            return str(value) if value is not None and str(value) != "" else None
        return str(value)
    except (ValueError, OverflowError):
        raise ValueError(f"setting {name} needs a {type_name} value, got {value!r}") from None


def reference_markdown() -> str:
    """docs/configuration.md, generated from the fields above so that it cannot drift."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by `meshrpc config --reference`; a test checks that it is current -->",
        "",
        "Every setting has a default here; a `MESHRPC_<NAME>` environment variable overrides it, and code",
        "can pass its own `meshrpc.Settings` to a `Daemon` or `Proxy` (`settings=meshrpc.config.copy(NAME=value)`).",
        "`meshrpc config` prints the effective values.",
        "",
        "| Setting | Type | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, type_name, default, doc in Settings.reference():
        lines.append(f"| `{name}` | {type_name} | `{default!r}` | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


#: the process settings; bad MESHRPC_* variables are listed in ENV_PROBLEMS (and left at their defaults)
#: and raised as ConfigError by `import meshrpc` (the CLI prints them as one line instead)
config, ENV_PROBLEMS = Settings.from_env_checked()
# Pyro5's names for the class and the process-wide instance (`Pyro5.configure`)
Configuration = Settings
global_config = config


def dump() -> None:
    """Print the effective process-wide settings (Pyro5's `configure.dump`; `meshrpc config` does the same)."""
    print(config.dump())
