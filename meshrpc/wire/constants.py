"""Protocol constants: the one home of the values a peer must agree on (docs/architecture.md, "Where
constants live"). Changing one breaks compatibility with running peers.

Sections: protocol 502's header values, the session (object ids, annotations, capability letters),
the name server, events, mDNS and DNS, the mesh's records, the mesh-key proof, values and serializers.
Struct layouts stay with their codec (HEADER in wire/frame.py). Timings and limits are not here:
Settings (config.py) or limits.py.
"""

from __future__ import annotations

# protocol 502 (Pyro5's): the header's values (its layout, HEADER, is in wire/frame.py with the codec)
PROTOCOL_VERSION = 502
TAG = b"PYRO"
MAGIC = 0x4DC5
MSG_CONNECT = 1
MSG_CONNECTOK = 2
MSG_CONNECTFAIL = 3
MSG_INVOKE = 4
MSG_RESULT = 5
MSG_PING = 6
MESSAGE_TYPES = {MSG_CONNECT, MSG_CONNECTOK, MSG_CONNECTFAIL, MSG_INVOKE, MSG_RESULT, MSG_PING}
FLAG_EXCEPTION = 1
FLAG_COMPRESSED = 2
FLAG_ONEWAY = 4
FLAG_BATCH = 8
FLAG_ITEMSTREAMRESULT = 16
FLAG_KEEPSERIALIZED = 32
FLAG_CORR_ID = 64

# the session: object ids, reasons
DAEMON_OBJECT_ID = "Pyro.Daemon"  # the object every daemon serves (metadata, ping, streams)
BATCH_METHOD = "<batch>"          # the method name of a batch INVOKE (FLAG_BATCH)
UNKNOWN_OBJECT_REASON = "unknown object"  # CONNECTFAIL reason when the object is not served (Pyro5's text)

# annotations: 4 ASCII letters each. Pyro5 peers ignore ids they do not know.
CAPABILITIES = "MRPC"        # CONNECT: what the proxy offers; CONNECTOK: what both sides will use
OOB_ANNOTATION = "MROB"      # INVOKE and RESULT: out-of-band blobs, see wire.frame.pack_oob
KEY_ANNOTATION = "MKEY"      # CONNECT and CONNECTOK: the mesh-key proof (wire.keyproof)
NOT_RUN_ANNOTATION = "NRUN"  # on an error RESULT: the daemon is shutting down and did not run the call
STREAM_ANNOTATION = "STRM"   # on a stream RESULT: the stream id (Pyro5's)
BLOB_ANNOTATION = "BLBI"     # on a SerializedBlob INVOKE: marshal((info, object id, method)) (Pyro5's)

# capability letters, meshrpc peers only (a Pyro5 peer agrees to none)
CAP_OOB = b"1"        # bytes-like values travel out of band (OOB_ANNOTATION)
CAP_BINARY = b"b"     # plain serpent values in binary form (serializer id 77, wire.plain)
CAP_PIPELINE = b"p"   # many requests outstanding on one connection, replies matched by seq

# the name server (Pyro5's protocol: its object id, its entry's tag, the broadcast question)
NAMESERVER_NAME = "Pyro.NameServer"  # object id and registered name, as in Pyro5
NAMESERVER_METADATA = frozenset({"class:Pyro5.nameserver.NameServer"})  # Pyro5 tags its own entry so
NS_BROADCAST_REQUEST = b"GET_NSURI"  # the UDP question; the answer is the name server's URI
NS_BROADCAST_MAX_DATAGRAM = 100  # Pyro5 reads 100 bytes; GET_NSURI is 9
NS_DEFAULT_PORT = 9090  # a PYRONAME/PYROMETA URI without a port means the name server on this one (Pyro5's)

# events (docs/events.md): names and flags that publishers, subscribers and event servers agree on
EVENTS_INBOX_NAME = "meshrpc.events.inbox"  # a subscriber's inbox announcement; the i-th more: + ".i"
EVENTS_SERVER_NAME = "Pyro.EventService"  # the event server's object id and name (Pyro3's)
EVENT_CLASS = "meshrpc.events.Event"  # an Event travels as a dict of this class (Pyro3-style subscribers)
EVENT_REPLAYED = 1  # flag: a retained last value replayed to a new subscriber
EVENT_RETAIN = 2  # flag (publisher to event server): keep this as the subject's last value
EVENTS_SUBJECT_TAG = "ev:"  # an inbox's mesh tag for a subject pattern
EVENTS_REGEX_TAG = "evre:"  # an inbox's mesh tag for a regex pattern
EVENTS_MAX_SUBJECT = 255  # bytes of a subject or pattern (a TXT string holds a tag of this size)

# mDNS and DNS (RFC 1035, 6762, 6763), spelled out rather than taken from zeroconf's private const
MDNS_GROUP = ("224.0.0.251", 5353)
DNS_TYPE_PTR = 12
DNS_TYPE_TXT = 16
DNS_CLASS_IN = 1
DNS_CLASS_IN_UNIQUE = 1 | 0x8000  # IN with the mDNS cache-flush bit: replaces older copies
DNS_FLAGS_QUERY = 0
DNS_FLAGS_RESPONSE_AA = 0x8000 | 0x0400  # QR (response) + AA (authoritative)
DNS_MAX_LABEL = 63  # one DNS label
DNS_MAX_TXT_STRING = 255  # one length-prefixed string in a TXT record

# the mesh's DNS-SD records (mesh/records.py is their codec; docs/mesh.md)
MESH_SERVICE_TYPE = "_meshrpc._tcp.local."
# A node's index (anti-entropy): pages of (instance label, version) under a type nobody browses, so
# DNS-SD browsers of MESH_SERVICE_TYPE never list them; a registry asks for them only on a digest mismatch.
MESH_INDEX_SERVICE_TYPE = "_meshrpc-ix._tcp.local."
MESH_INDEX_PREFIX = "mrix"
MESH_INDEX_PAGE_ENTRIES = 14  # labels per index page: 14 x (63 + 21) bytes and headers fit MESH_TXT_ADVISED_MAX
MESH_FORMAT_VERSION = "1"
MESH_HEARTBEAT_PREFIX = "mrhb-"
MESH_SERVER_PREFIX = "mr-"
MESH_TXT_ADVISED_MAX = 1300  # RFC 6763 advice: keep a TXT record inside one packet (Settings.MESH_TXT_MAX's default)
MESH_MAX_OTHER_HOSTS = 8  # other addresses of a wildcard-bound daemon, in one entry
MESH_AUTH_TXT_KEY = "a"  # TXT key of the authenticator: a=<base64 of MESH_AUTH_BYTES>
MESH_AUTH_BYTES = 16  # truncated HMAC-SHA256 (128 bits)

# the mesh-key proof of the handshake (wire/keyproof.py, docs/security.md)
KEY_NONCE_BYTES = 16
KEY_MAC_BYTES = 32  # HMAC-SHA256, whole
KEY_CLIENT_TOKEN_BYTES = KEY_NONCE_BYTES + 8 + KEY_MAC_BYTES  # nonce, timestamp (ms, u64), mac
KEY_SERVER_TOKEN_BYTES = KEY_NONCE_BYTES + KEY_MAC_BYTES  # server nonce, mac

# values and serializers
PING_SERIALIZER_ID = 42  # Pyro5 pings with this id and a b"ping" payload; the reply echoes both
BINARY_MARSHAL_VERSION = 2  # serpent's binary form (CAP_BINARY): the newest marshal without back-references
OOB_CLASS = "meshrpc.oob"  # the class name of the marker dict that stands for an out-of-band blob (CAP_OOB)
