"""Talking to an etcd cluster through its JSON gateway (`/v3/`), with member failover, auth and TLS.

The requests go through `etcd3gw` (sessions, TLS, the gateway's error mapping, leases). The watch
stream is read here directly: etcd3gw's watcher drops what a resumable mirror needs (the header
revision, `compact_revision`, `canceled`) and ends its thread silently when a member dies.
Every failure becomes a NamingError whose one line says what to check.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import NamingError
from ..limits import ETCD_TXN_OPS

log = logging.getLogger("meshrpc.etcd")

API_PATH = "/v3/"       # etcd >= 3.4 (3.3 and older are out of support): no /version round trip


@dataclass(frozen=True)
class Target:
    """An etcd cluster as RESOLVE names it."""

    members: tuple[tuple[str, int], ...]
    tls: bool

    def __str__(self) -> str:
        return ("etcds://" if self.tls else "etcd://") + ",".join(f"{h}:{p}" for h, p in self.members)


def target_of(settings: Settings) -> Target | None:
    """The etcd cluster RESOLVE names (None when it names none); NamingError when it is malformed."""
    from ..resolve import split_sources
    found = [members for name, members in split_sources(settings.RESOLVE) if name == "etcd"]
    if not found:
        return None
    if len(found) > 1:
        raise NamingError(f"RESOLVE={settings.RESOLVE!r} names more than one etcd cluster; name one")
    items = found[0]
    if not items:
        raise NamingError(f"RESOLVE={settings.RESOLVE!r}: give the etcd members as etcd://host:port,host:port")
    scheme, _, first = items[0].partition("://")
    members = []
    for item in [first, *items[1:]]:
        host, colon, port = item.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise NamingError(f"RESOLVE: {item!r} is not an etcd member's host:port (etcd's client port, 2379 by default)")
        members.append((host, int(port)))
    tls = scheme == "etcds"
    if not tls and (settings.ETCD_CERT or settings.ETCD_CACERT):
        raise NamingError("ETCD_CERT/ETCD_CACERT are set but RESOLVE names etcd:// (plain): use etcds:// for TLS")
    return Target(tuple(members), tls)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1]) if prefix and prefix[-1] < 0xFF else b"\0"


class WatchBroken(Exception):
    """The watch stream ended, timed out or failed; the watcher reconnects."""


class Compacted(Exception):
    """The revision to resume from was compacted away: list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"compacted at revision {compact_revision}")
        self.compact_revision = compact_revision


class Gateway:
    """One etcd cluster. Thread-safe; a request goes to the current member and on failure to the next."""

    def __init__(self, settings: Settings, target: Target | None = None) -> None:
        import etcd3gw  # noqa: F401 - fail early with the hint below
        self.settings = settings
        found = target or target_of(settings)
        if found is None:
            raise NamingError("no etcd cluster configured: name it in MESHRPC_RESOLVE, e.g. mdns,etcd://h1:2379,h2:2379")
        self.target = found
        self._lock = threading.Lock()
        self._current = 0
        self._token: str | None = None
        self._clients = [self._client(host, port) for host, port in self.target.members]
        self._streams: set[Any] = set()     # open watch responses, cut by close()

    def _client(self, host: str, port: int) -> Any:
        from etcd3gw.client import Etcd3Client
        s = self.settings
        client = Etcd3Client(host=host, port=port, protocol="https" if self.target.tls else "http",
                             ca_cert=s.ETCD_CACERT or None, cert_key=s.ETCD_CERT_KEY or None,
                             cert_cert=s.ETCD_CERT or None, timeout=s.ETCD_TIMEOUT, api_path=API_PATH)
        if s.ETCD_CACERT:      # requests would let REQUESTS_CA_BUNDLE override the CA we were given
            client.session.trust_env = False
        return client

    # ---------------------------------------------------------------- the calls meshrpc makes

    def range_prefix(self, prefix: bytes) -> tuple[int, list[dict[str, Any]]]:
        """(revision of the read, the key-values under prefix: key/value bytes, mod_revision, lease)."""
        reply = self.call("kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        kvs = [_kv(item) for item in reply.get("kvs", [])]
        return int(reply["header"]["revision"]), kvs

    def put(self, key: bytes, value: bytes, lease: int) -> int:
        reply = self.call("kv/put", {"key": b64(key), "value": b64(value), "lease": str(lease)})
        return int(reply["header"]["revision"])

    def put_many(self, items: list[tuple[bytes, bytes]], lease: int) -> None:
        """Several puts in transactions of at most ETCD_TXN_OPS (one request and one revision each)."""
        for start in range(0, len(items), ETCD_TXN_OPS):
            chunk = items[start:start + ETCD_TXN_OPS]
            self.call("kv/txn", {"success": [{"request_put": {"key": b64(k), "value": b64(v), "lease": str(lease)}}
                                             for k, v in chunk]})

    def delete(self, key: bytes) -> None:
        self.call("kv/deleterange", {"key": b64(key)})

    def grant(self, ttl: int) -> int:
        reply = self.call("lease/grant", {"TTL": str(ttl), "ID": "0"})
        if reply.get("error"):
            raise NamingError(f"etcd refused a lease of {ttl} s: {reply['error']} (check ETCD_LEASE_TTL)")
        return int(reply["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's new TTL; 0 or less when it has expired already."""
        reply = self.call("lease/keepalive", {"ID": str(lease)})
        return int(reply.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self.call("kv/lease/revoke", {"ID": str(lease)})
        except NamingError as exc:
            if "not found" not in str(exc):
                raise

    def compact(self, revision: int) -> None:
        """(Tests, operators) drop the history before revision."""
        self.call("kv/compaction", {"revision": str(revision), "physical": True})

    # ---------------------------------------------------------------- requests with failover

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST path on the current member, then each other member once; NamingError when none answers."""
        from etcd3gw import exceptions as gw
        failures: list[str] = []
        with self._lock:
            start = self._current
        count = len(self._clients)
        for step in range(count):
            index = (start + step) % count
            client = self._clients[index]
            try:
                reply = self._post(client, path, body)
            except gw.Etcd3Exception as exc:
                why = _why(exc)
                if _is_auth(why):
                    raise NamingError(f"etcd at {self.target} refused user {self.settings.ETCD_USER!r}: {why} "
                                      f"(check ETCD_USER and ETCD_PASSWORD, and the user's role on "
                                      f"{self.settings.ETCD_PREFIX!r})") from None
                if _is_tls(why):
                    raise NamingError(f"TLS with etcd at {client.host}:{client.port} failed: {_tls_reason(why)} (check "
                                      f"ETCD_CACERT, ETCD_CERT and ETCD_CERT_KEY, and that the members serve "
                                      f"etcds://)") from None
                if not _is_retryable(exc, why):
                    raise NamingError(f"etcd at {client.host}:{client.port} refused {path}: {why[:200]}") from None
                failures.append(f"{client.host}:{client.port}: {why[:80]}")
                continue
            with self._lock:
                if self._current != index:
                    log.info("etcd: now talking to %s:%d", client.host, client.port)
                    self._current = index
            return reply
        raise NamingError(f"etcd unreachable at {self.target} ({'; '.join(failures)}): check that its members run "
                          f"and that MESHRPC_RESOLVE names their client URLs")

    def _post(self, client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from etcd3gw import exceptions as gw
        self._ensure_token(client)
        try:
            return client.post(client.get_url(path), json=body)
        except gw.Etcd3Exception as exc:
            if self.settings.ETCD_USER and "invalid auth token" in _why(exc):   # expired: log in again
                self._ensure_token(client, renew=True)
                return client.post(client.get_url(path), json=body)
            raise

    def _ensure_token(self, client: Any, renew: bool = False) -> None:
        """etcd auth: a token from user/password, sent as the Authorization header by every session."""
        if not self.settings.ETCD_USER:
            return
        with self._lock:
            token = self._token
            if token is None or renew:
                token = None
        if token is None:
            reply = client.post(client.get_url("auth/authenticate"),
                                json={"name": self.settings.ETCD_USER, "password": self.settings.ETCD_PASSWORD})
            token = reply["token"]
            with self._lock:
                self._token = token
        for each in self._clients:
            each.session.headers["Authorization"] = token

    def advance(self) -> None:
        """The current member failed outside call() (a watch): use the next one from now on."""
        with self._lock:
            self._current = (self._current + 1) % len(self._clients)

    # ---------------------------------------------------------------- the watch stream

    def watch(self, prefix: bytes, start_revision: int, idle: float,
              stop: threading.Event) -> Iterator[dict[str, Any]]:
        """The results of a watch on prefix from start_revision, from the current member: each a dict
        with "events" (key/value bytes, mod_revision, lease; "type" PUT or DELETE) and "revision", the
        revision everything up to which has been delivered (0: unknown yet).
        Raises Compacted, or WatchBroken when the stream ends, fails or stays silent idle seconds."""
        import requests
        with self._lock:
            client = self._clients[self._current]
        try:
            self._ensure_token(client)
        except Exception as exc:  # noqa: BLE001 - any failure here means: try the next member
            raise WatchBroken(f"{client.host}:{client.port}: {_why(exc)[:120]}") from None
        session = requests.Session()
        session.verify, session.cert = client.session.verify, client.session.cert
        session.trust_env = client.session.trust_env
        session.headers.update(client.session.headers)
        request = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                      "start_revision": str(start_revision), "progress_notify": True}}
        where = f"{client.host}:{client.port}"
        try:
            response = session.post(client.get_url("watch"), json=request, stream=True,
                                    timeout=(self.settings.ETCD_TIMEOUT, idle))
            with self._lock:
                self._streams.add(response)
            if stop.is_set():
                return
            if response.status_code != 200:
                raise WatchBroken(f"{where}: HTTP {response.status_code} {response.text[:120]}")
            buffer = b""
            for chunk in response.iter_content(chunk_size=None):
                if stop.is_set():
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield _watch_result(json.loads(line), where)
            raise WatchBroken(f"{where}: the watch stream ended")
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise WatchBroken(f"{where}: {_why(exc)[:120]}") from None
        finally:
            with self._lock:
                self._streams.discard(locals().get("response"))
            session.close()

    def close(self) -> None:
        """Close every session and cut open watch streams (their reader wakes up at once)."""
        import socket
        with self._lock:
            streams = list(self._streams)
        for response in streams:
            try:
                sock = socket.fromfd(response.raw.fileno(), socket.AF_INET, socket.SOCK_STREAM)
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except (OSError, ValueError, AttributeError):
                pass
        for client in self._clients:
            client.session.close()


def _watch_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    if "error" in message:
        raise WatchBroken(f"{where}: {message['error'].get('message', message['error'])}")
    result = message["result"]
    compact = int(result.get("compact_revision", 0) or 0)
    if compact:
        raise Compacted(compact)
    if result.get("canceled"):
        raise WatchBroken(f"{where}: watch canceled ({result.get('cancel_reason', 'no reason given')})")
    events = [dict(_kv(e["kv"]), type=e.get("type", "PUT")) for e in result.get("events", [])]
    if events:
        revision = max(e["mod_revision"] for e in events)
    elif result.get("created"):
        revision = 0    # the header is the store's revision, not what was sent: events may follow
    else:
        revision = int(result["header"]["revision"])   # a progress notification: everything up to it was sent
    return {"revision": revision, "events": events}


def _kv(item: dict[str, Any]) -> dict[str, Any]:
    return {"key": unb64(item.get("key", "")), "value": unb64(item.get("value", "")),
            "mod_revision": int(item.get("mod_revision", 0)), "lease": int(item.get("lease", 0))}


def _why(exc: BaseException) -> str:
    text = getattr(exc, "detail_text", None) or str(exc) or type(exc).__name__
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            return str(parsed.get("error") or parsed.get("message") or text)
    except ValueError:
        pass
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text:
        return "timed out"
    return text


def _is_auth(why: str) -> bool:
    return any(s in why for s in ("authentication failed", "permission denied", "user name is empty",
                                  "user name not found", "invalid auth token"))


def _is_tls(why: str) -> bool:
    return any(s in why for s in ("SSL", "CERTIFICATE", "certificate", "TLS"))


def _tls_reason(why: str) -> str:
    """The gist of an SSL error buried in requests' text."""
    if "CERTIFICATE_VERIFY_FAILED" in why or "SSLCertVerificationError" in why:
        return "the member's certificate did not verify against ETCD_CACERT (or the system's CAs)"
    if "SSLEOFError" in why or "EOF occurred" in why or "ALERT" in why:
        return "the member ended the handshake (it wants a client certificate it accepts)"
    if "WRONG_VERSION_NUMBER" in why:
        return "the member does not speak TLS (use etcd://)"
    found = re.search(r"\[SSL: ([A-Z_]+)\]", why)
    return found.group(1).lower().replace("_", " ") if found else why[:120]


def _is_retryable(exc: BaseException, why: str) -> bool:
    from etcd3gw import exceptions as gw
    if isinstance(exc, (gw.ConnectionFailedError, gw.ConnectionTimeoutError, gw.InternalServerError)):
        return True
    return any(s in why for s in ("leader changed", "no leader", "timed out", "unavailable", "stopped"))
