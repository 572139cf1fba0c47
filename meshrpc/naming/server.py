"""The name server: `NameServer` (Pyro5's API on object id `Pyro.NameServer`), its daemon, autoclean."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .. import errors
from ..config import Settings
from ..config import config as default_config
from ..errors import NamingError
from ..server.daemon import Daemon
from ..server.decorators import expose, idempotent
from ..uri import URI
from ..wire.constants import DAEMON_OBJECT_ID, NAMESERVER_METADATA, NAMESERVER_NAME
from ..limits import (
    NS_AUTOCLEAN_CONCURRENCY,
    NS_AUTOCLEAN_MIN,
    NS_AUTOCLEAN_PROBE_TIMEOUT,
    NS_MAX_ENTRIES,
    NS_MAX_NAME_LENGTH,
    NS_MAX_TAGS,
    NS_MAX_TAGS_TOTAL,
    NS_MAX_TAG_LENGTH,
    NS_MAX_URI_LENGTH,
)
from .saferegex import compile_safe
from .storage import Storage, open_storage

log = logging.getLogger("meshrpc.naming")


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError("name must be a str")
    if not name:
        raise NamingError("name must not be empty")
    if len(name) > NS_MAX_NAME_LENGTH:
        raise NamingError(f"name too long: {len(name)} characters, at most {NS_MAX_NAME_LENGTH}")
    return name


def _check_uri(uri: Any) -> str:
    if isinstance(uri, URI):
        text = str(uri)
    elif isinstance(uri, str):
        text = uri
    else:
        raise TypeError("only URIs or strings can be registered")
    if len(text) > NS_MAX_URI_LENGTH:
        raise NamingError(f"uri too long: {len(text)} characters, at most {NS_MAX_URI_LENGTH}")
    try:
        return str(URI(text))
    except ValueError as exc:
        raise NamingError(f"invalid uri: {exc}") from None


def _check_tags(metadata: Any, what: str = "metadata") -> frozenset[str]:
    """Tags from any iterable of str except a str itself (Pyro5 accepts sets, lists, tuples)."""
    if metadata is None:
        return frozenset()
    if isinstance(metadata, (str, bytes)):
        raise TypeError(f"{what} should not be a str, but another iterable (set, list, etc)")
    if isinstance(metadata, dict):
        raise TypeError(f"{what} must be a set, list or tuple of strings, not a dict")
    try:
        items = list(itertools.islice(iter(metadata), NS_MAX_TAGS * 4 + 1))
    except TypeError:
        raise TypeError(f"{what} must be a set, list or tuple of strings, not {type(metadata).__name__}") from None
    if len(items) > NS_MAX_TAGS * 4:
        raise NamingError(f"too many {what} tags: at most {NS_MAX_TAGS}")
    if any(not isinstance(tag, str) for tag in items):
        raise TypeError(f"{what} tags must be strings")
    tags = frozenset(items)
    if len(tags) > NS_MAX_TAGS:
        raise NamingError(f"too many {what} tags: {len(tags)}, at most {NS_MAX_TAGS}")
    if any(len(tag) > NS_MAX_TAG_LENGTH for tag in tags):
        raise NamingError(f"{what} tag too long: at most {NS_MAX_TAG_LENGTH} characters")
    if sum(len(tag) for tag in tags) > NS_MAX_TAGS_TOTAL:
        raise NamingError(f"{what} too large: at most {NS_MAX_TAGS_TOTAL} characters of tags in all")
    return tags


def _check_filter(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    return value


class NameServer:
    """Maps names to URIs (and metadata tags). Exposed with exactly Pyro5's name-server methods; the
    read-only ones and set_metadata are marked idempotent, so meshrpc proxies may re-send them."""

    def __init__(self, storage: Storage | str | None = None, storageProvider: Storage | None = None) -> None:
        storage = storage if storage is not None else storageProvider  # storageProvider: Pyro5's name
        self.storage = open_storage(storage if storage is not None else "memory")
        self.lock = threading.RLock()  # for the read-check-write of register/set_metadata limits (Pyro5's name)
        self._own_uri: str | None = None

    # ---------------------------------------------------------------- Pyro5's API
    @expose
    @idempotent
    def count(self) -> int:
        """The number of registrations (the name server's own included)."""
        return self.storage.count()

    @expose
    @idempotent
    def lookup(self, name: str, return_metadata: bool = False) -> Any:
        """The URI of name; (URI, metadata set) when return_metadata. NamingError for an unknown name."""
        _check_name(name)
        entry = self.storage.get(name)
        if entry is None:
            raise NamingError("unknown name: " + name)
        uri = URI(entry[0])
        return (uri, set(entry[1])) if return_metadata else uri

    @expose
    def register(self, name: str, uri: Any, safe: bool = False, metadata: Iterable[str] | None = None) -> None:
        """Map name to uri (a URI or string), replacing an existing entry unless safe."""
        uri_text = _check_uri(uri)
        _check_name(name)
        tags = _check_tags(metadata)
        with self.lock:
            if self.storage.get(name) is None and self.storage.count() >= NS_MAX_ENTRIES:
                raise NamingError(f"name server full: {NS_MAX_ENTRIES} entries")
            if not self.storage.put(name, uri_text, tags, only_if_absent=bool(safe)):
                raise NamingError("name already registered: " + name)

    @expose
    @idempotent
    def set_metadata(self, name: str, metadata: Iterable[str] | None) -> None:
        """Replace the metadata tags of an existing registration."""
        _check_name(name)
        tags = _check_tags(metadata)
        if not self.storage.set_metadata(name, tags):
            raise NamingError("unknown name: " + name)

    @expose
    def remove(self, name: str | None = None, prefix: str | None = None, regex: str | None = None) -> int:
        """Remove one name, or every name with a prefix or matching a regex; the number removed.
        The name server's own entry stays."""
        name, prefix, regex = (_check_filter(name, "name"), _check_filter(prefix, "prefix"),
                               _check_filter(regex, "regex"))
        if name and name != NAMESERVER_NAME:
            with self.lock:  # with register's check-then-write (and as Pyro5 programs expect of remove)
                return self.storage.remove([name])
        if prefix or regex:
            selected = self._select(prefix, regex)
            selected.pop(NAMESERVER_NAME, None)
            # only what was selected: an entry re-registered meanwhile with another uri stays
            return self.storage.remove_entries((n, uri) for n, (uri, _) in selected.items())
        return 0

    @expose
    @idempotent
    def list(self, prefix: str | None = None, regex: str | None = None, return_metadata: bool = False) -> dict:
        """{name: uri string}, or {name: (uri string, metadata set)}; filtered by prefix or regex."""
        prefix, regex = _check_filter(prefix, "prefix"), _check_filter(regex, "regex")
        if prefix and regex:
            raise ValueError("you can only filter on one thing at a time")
        return self._shape(self._select(prefix, regex), return_metadata)

    @expose
    @idempotent
    def yplookup(self, meta_all: Iterable[str] | None = None, meta_any: Iterable[str] | None = None,
                 return_metadata: bool = True) -> dict:
        """Registrations having all tags of meta_all, or any tag of meta_any (one of them)."""
        if meta_all and meta_any:
            raise ValueError("you can't use meta_all or meta_any at the same time")
        if meta_all:
            found = self.storage.with_metadata(meta_all=_check_tags(meta_all, "metadata_all"))
        elif meta_any:
            found = self.storage.with_metadata(meta_any=_check_tags(meta_any, "metadata_any"))
        else:
            return {}
        return self._shape(found, return_metadata)

    @expose
    @idempotent
    def ping(self) -> None:
        """Does nothing: a cheap check that the name server answers."""

    # ---------------------------------------------------------------- helpers
    def _select(self, prefix: str | None, regex: str | None) -> dict[str, tuple[str, frozenset[str]]]:
        if prefix:
            return self.storage.with_prefix(prefix)
        everything = self.storage.items()
        if regex:
            pattern = compile_safe(regex)  # NamingError("invalid regex: ...") / unsupported / too long
            return {n: everything[n] for n in pattern.filter(everything)}
        return everything

    @staticmethod
    def _shape(found: dict[str, tuple[str, frozenset[str]]], return_metadata: bool) -> dict:
        if return_metadata:
            return {name: (uri, set(tags)) for name, (uri, tags) in found.items()}
        return {name: uri for name, (uri, _) in found.items()}

    def _register_self(self, uri: URI) -> None:
        self._own_uri = str(uri)
        self.storage.put(NAMESERVER_NAME, self._own_uri, NAMESERVER_METADATA)

    def close(self) -> None:
        self.storage.close()

    def __repr__(self) -> str:
        return f"<meshrpc.naming.NameServer {self.storage!r}>"


# ------------------------------------------------------------------------- autoclean
def probe_daemon(uri: URI, timeout: float) -> bool:
    """Is a daemon serving at uri's location? A CONNECTOK or CONNECTFAIL to `Pyro.Daemon` says yes
    (a daemon that refuses our handshake is running all the same); no answer says no."""
    from ..transport.sockets import FramedConnection, connect
    from ..wire.serializers import by_name
    from ..wire.session import ClientSession, ConnectRefused
    try:
        sock = connect(uri.host, uri.port, uri.sockname, timeout)
    except errors.CommunicationError:
        return False
    session = ClientSession(by_name("serpent"), Settings(KEY="", MAX_MESSAGE_SIZE=1024 * 1024))
    conn = FramedConnection(sock, 1024 * 1024, protocol=session)
    try:
        conn.send_parts(session.connect_request(DAEMON_OBJECT_ID))
        return isinstance(conn.next_event(), ConnectRefused) or session.handshaken
    except (errors.MeshError, OSError):
        return False
    finally:
        conn.close()


class AutoCleaner:
    """Every `interval` seconds, probes the daemons behind the registered PYRO URIs and removes the
    entries of a daemon after `misses` consecutive failed probes."""

    def __init__(self, nameserver: NameServer, interval: float, misses: int = Settings.NS_AUTOCLEAN_MISSES,
                 probe: Callable[[URI, float], bool] = probe_daemon,
                 probe_timeout: float = NS_AUTOCLEAN_PROBE_TIMEOUT) -> None:
        if interval < NS_AUTOCLEAN_MIN:
            raise ValueError(f"autoclean interval must be at least {NS_AUTOCLEAN_MIN} s")
        if misses < 1:
            raise ValueError("autoclean misses must be at least 1")
        self.nameserver = nameserver
        self.interval = float(interval)
        self.misses = int(misses)
        self.probe = probe
        self.probe_timeout = probe_timeout
        self._missed: dict[tuple, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _location(uri: URI) -> tuple:
        return (uri.sockname,) if uri.sockname else (uri.host, uri.port)

    def sweep(self) -> int:
        """One round: probe every daemon once, remove what has missed too often; the number removed."""
        by_location: dict[tuple, list[tuple[str, str]]] = {}
        samples: dict[tuple, URI] = {}
        for name, (uri_text, _) in self.nameserver.storage.items().items():
            if name == NAMESERVER_NAME or uri_text == self.nameserver._own_uri:
                continue
            try:
                uri = URI(uri_text)
            except ValueError:
                continue
            if not uri.is_direct:
                continue
            location = self._location(uri)
            by_location.setdefault(location, []).append((name, uri_text))
            samples.setdefault(location, uri)
        for gone in set(self._missed) - set(by_location):
            del self._missed[gone]
        if not samples:
            return 0
        workers = min(NS_AUTOCLEAN_CONCURRENCY, len(samples))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ns-autoclean") as pool:
            alive = dict(zip(samples, pool.map(self._safe_probe, samples.values())))
        removed = 0
        for location, ok in alive.items():
            if ok:
                self._missed.pop(location, None)
                continue
            self._missed[location] = self._missed.get(location, 0) + 1
            if self._missed[location] >= self.misses:
                entries = by_location[location]
                count = self.nameserver.storage.remove_entries(entries)
                removed += count
                del self._missed[location]
                log.info("autoclean: removed %d entries of unreachable daemon %s: %s", count,
                         samples[location].location, ", ".join(n for n, _ in entries))
        return removed

    def _safe_probe(self, uri: URI) -> bool:
        try:
            return bool(self.probe(uri, self.probe_timeout))
        except Exception:
            log.exception("autoclean probe of %s failed", uri)
            return True  # a broken probe must not wipe entries

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:
                log.exception("autoclean sweep failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ns-autoclean", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.probe_timeout + 5)


# ------------------------------------------------------------------------- the daemon
class NameServerDaemon(Daemon):
    """A Daemon serving a NameServer as `Pyro.NameServer`; closing it closes the storage too."""

    def __init__(self, host: str | None = None, port: int | None = None, storage: Storage | str = "memory",
                 *, settings: Settings | None = None, autoclean: float | None = None,
                 autoclean_misses: int | None = None, announce: bool = False, bridge: bool = False,
                 nathost: str | None = None, natport: int | None = None) -> None:
        settings = settings or default_config
        host = host if host is not None else (settings.NS_HOST or settings.HOST)
        port = settings.NS_PORT if port is None else port
        self.nameserver = NameServer(storage)
        self.autocleaner: AutoCleaner | None = None
        self.bridge: Any = None
        try:
            super().__init__(host, port, nathost=nathost, natport=natport, settings=settings)
        except BaseException:
            self.nameserver.close()
            raise
        try:
            self._serve_nameserver(announce)
            interval = float(getattr(self.settings, "NS_AUTOCLEAN", Settings.NS_AUTOCLEAN) if autoclean is None
                             else autoclean)
            if interval > 0:
                misses = int(getattr(self.settings, "NS_AUTOCLEAN_MISSES", Settings.NS_AUTOCLEAN_MISSES)
                             if autoclean_misses is None else autoclean_misses)
                self.autocleaner = AutoCleaner(self.nameserver, interval, misses)
                self.autocleaner.start()
            if bridge:
                from .bridge import MeshBridge
                # the bridge listens where the name server serves (0.0.0.0: every interface)
                self.bridge = MeshBridge(self.nameserver, self.settings.copy(HOST=host))
        except BaseException:
            self.close()
            raise
        log.info("name server %s ready, %d entries", self.uriFor(NAMESERVER_NAME), self.nameserver.count())

    def _serve_nameserver(self, announce: bool) -> None:
        if announce:
            try:  # also on the mesh, so that locate_ns finds it by mDNS
                self.register(self.nameserver, NAMESERVER_NAME, name=NAMESERVER_NAME,
                              metadata=NAMESERVER_METADATA)
            except Exception as exc:  # noqa: BLE001 - the mesh is optional; the name server works without it
                log.warning("name server not announced on the mesh: %s", exc)
        if NAMESERVER_NAME not in self._objects:
            self.register(self.nameserver, NAMESERVER_NAME)
        self.nameserver._register_self(self.uriFor(NAMESERVER_NAME, nat=True))

    @property
    def cleaner_thread(self) -> AutoCleaner | None:
        """Pyro5's name for the autoclean thread (None when autoclean is off or the daemon closed)."""
        return self.autocleaner

    def close(self) -> None:
        if self.autocleaner is not None:
            self.autocleaner.stop()
            self.autocleaner = None
        if self.bridge is not None:
            self.bridge.close()
        super().close()
        if self.nameserver is not None:
            self.nameserver.close()
            self.nameserver = None  # type: ignore[assignment]  # as Pyro5: a closed name server daemon has none

    def __repr__(self) -> str:
        return f"<meshrpc.naming.NameServerDaemon {self.locationStr}>"


__all__ = ["AutoCleaner", "NameServer", "NameServerDaemon", "probe_daemon"]
