"""Where the name server keeps its entries: name -> (uri string, metadata tags).

Two back-ends with one small interface, both safe to use from many threads:
`MemoryStorage` (a dict; forgets everything on exit) and `SqliteStorage` (`sql:PATH`; every
acknowledged change is fsynced before the call returns, so it survives kill -9 and power loss).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from typing import Self

from ..errors import NamingError
from ..limits import SQLITE_BUSY_TIMEOUT_MS

log = logging.getLogger("meshrpc.naming")

Entry = tuple[str, frozenset[str]]  # (uri string, metadata tags)


class Storage:
    """The interface the name server uses. Every method is atomic."""

    # Pyro5's storages are mappings: `name in storage` and `del storage[name]` work here too
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __delitem__(self, name: str) -> None:
        if not self.remove([name]):
            raise KeyError(name)

    def get(self, name: str) -> Entry | None:
        raise NotImplementedError

    def put(self, name: str, uri: str, metadata: Iterable[str] = (), only_if_absent: bool = False) -> bool:
        """Store the entry (replacing one of the same name unless only_if_absent); False when it existed
        and only_if_absent was asked."""
        raise NotImplementedError

    def set_metadata(self, name: str, metadata: Iterable[str]) -> bool:
        """Replace the tags of an existing entry; False when there is no such name."""
        raise NotImplementedError

    def remove(self, names: Iterable[str]) -> int:
        """Remove these names; the number that existed."""
        raise NotImplementedError

    def remove_entries(self, entries: Iterable[tuple[str, str]]) -> int:
        """Remove each (name, uri) only while the name still maps to that uri; the number removed."""
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def items(self) -> dict[str, Entry]:
        """A snapshot of everything."""
        raise NotImplementedError

    def with_prefix(self, prefix: str) -> dict[str, Entry]:
        return {name: entry for name, entry in self.items().items() if name.startswith(prefix)}

    def with_metadata(self, meta_all: frozenset[str] | None = None,
                      meta_any: frozenset[str] | None = None) -> dict[str, Entry]:
        """Entries having every tag of meta_all, or at least one of meta_any (give one of them)."""
        if meta_all:
            return {n: e for n, e in self.items().items() if meta_all <= e[1]}
        if meta_any:
            return {n: e for n, e in self.items().items() if meta_any & e[1]}
        return {}

    def close(self) -> None:
        pass

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemoryStorage(Storage):
    """Entries in a dict; gone when the process ends."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def put(self, name: str, uri: str, metadata: Iterable[str] = (), only_if_absent: bool = False) -> bool:
        entry = (uri, frozenset(metadata))
        with self._lock:
            if only_if_absent and name in self._entries:
                return False
            self._entries[name] = entry
            return True

    def set_metadata(self, name: str, metadata: Iterable[str]) -> bool:
        tags = frozenset(metadata)
        with self._lock:
            old = self._entries.get(name)
            if old is None:
                return False
            self._entries[name] = (old[0], tags)
            return True

    def remove(self, names: Iterable[str]) -> int:
        removed = 0
        with self._lock:
            for name in names:
                if self._entries.pop(name, None) is not None:
                    removed += 1
        return removed

    def remove_entries(self, entries: Iterable[tuple[str, str]]) -> int:
        removed = 0
        with self._lock:
            for name, uri in entries:
                current = self._entries.get(name)
                if current is not None and current[0] == uri:
                    del self._entries[name]
                    removed += 1
        return removed

    def count(self) -> int:
        return len(self._entries)

    def items(self) -> dict[str, Entry]:
        with self._lock:
            return dict(self._entries)

    def __repr__(self) -> str:
        return f"<MemoryStorage {len(self._entries)} entries>"


_SCHEMA_VERSION = 1


class SqliteStorage(Storage):
    """Entries in an sqlite file, durable once a call returned (WAL, synchronous=FULL)."""

    def __init__(self, path: str) -> None:
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError(f"sql storage needs a file path, not {path!r} (use 'memory' for a volatile store)")
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise NamingError(f"storage error: directory {parent} does not exist")
        self._lock = threading.Lock()
        try:
            # one connection shared by the daemon's workers, always under self._lock
            self._db = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise NamingError(f"storage error: cannot open {path}: {exc}") from None
        try:
            with self._lock:
                self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        try:
            db = self._db
            db.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("sqlite storage %s: WAL journal not available (%s); using it anyway", self.path, mode)
            # FULL: the WAL is fsynced at every commit, so an acknowledged change survives a crash
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("CREATE TABLE IF NOT EXISTS meshrpc_names ("
                               "name TEXT PRIMARY KEY NOT NULL, uri TEXT NOT NULL, metadata TEXT NOT NULL)")
                    db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            elif version != _SCHEMA_VERSION:
                raise NamingError(f"storage error: {self.path} has schema version {version}; this meshrpc "
                                  f"knows version {_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise NamingError(f"storage error: {self.path} is not a usable sqlite database: {exc}") from None

    # --- helpers
    @staticmethod
    def _encode(metadata: Iterable[str]) -> str:
        return json.dumps(sorted(frozenset(metadata)))

    @staticmethod
    def _decode(uri: str, metadata: str) -> Entry:
        try:
            tags = frozenset(json.loads(metadata))
        except (ValueError, TypeError):
            tags = frozenset()
        return uri, tags

    def _run(self, what: str, work):  # type: ignore[no-untyped-def]
        """Run work(db) under the lock, translating sqlite errors."""
        with self._lock:
            if self._db is None:
                raise NamingError("storage error: the storage is closed")
            try:
                return work(self._db)
            except sqlite3.Error as exc:
                raise NamingError(f"storage error in {what}: {exc}") from None

    def _write(self, what: str, work):  # type: ignore[no-untyped-def]
        """Run work(db) in one IMMEDIATE transaction, committed (and fsynced) before returning."""
        def transaction(db: sqlite3.Connection):  # type: ignore[no-untyped-def]
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        return self._run(what, transaction)

    # --- the interface
    def get(self, name: str) -> Entry | None:
        row = self._run("get", lambda db: db.execute(
            "SELECT uri, metadata FROM meshrpc_names WHERE name = ?", (name,)).fetchone())
        return None if row is None else self._decode(*row)

    def put(self, name: str, uri: str, metadata: Iterable[str] = (), only_if_absent: bool = False) -> bool:
        encoded = self._encode(metadata)

        def work(db: sqlite3.Connection) -> bool:
            if only_if_absent:
                cursor = db.execute("INSERT OR IGNORE INTO meshrpc_names(name, uri, metadata) VALUES (?, ?, ?)",
                                    (name, uri, encoded))
                return cursor.rowcount == 1
            db.execute("INSERT OR REPLACE INTO meshrpc_names(name, uri, metadata) VALUES (?, ?, ?)",
                       (name, uri, encoded))
            return True
        return bool(self._write("put", work))

    def set_metadata(self, name: str, metadata: Iterable[str]) -> bool:
        encoded = self._encode(metadata)
        return bool(self._write("set_metadata", lambda db: db.execute(
            "UPDATE meshrpc_names SET metadata = ? WHERE name = ?", (encoded, name)).rowcount == 1))

    def remove(self, names: Iterable[str]) -> int:
        names = list(names)
        if not names:
            return 0
        return int(self._write("remove", lambda db: sum(
            db.execute("DELETE FROM meshrpc_names WHERE name = ?", (n,)).rowcount for n in names)))

    def remove_entries(self, entries: Iterable[tuple[str, str]]) -> int:
        entries = list(entries)
        if not entries:
            return 0
        return int(self._write("remove_entries", lambda db: sum(
            db.execute("DELETE FROM meshrpc_names WHERE name = ? AND uri = ?", (n, u)).rowcount
            for n, u in entries)))

    def count(self) -> int:
        return int(self._run("count", lambda db: db.execute("SELECT COUNT(*) FROM meshrpc_names").fetchone()[0]))

    def items(self) -> dict[str, Entry]:
        rows = self._run("items", lambda db: db.execute("SELECT name, uri, metadata FROM meshrpc_names").fetchall())
        return {name: self._decode(uri, meta) for name, uri, meta in rows}

    def with_prefix(self, prefix: str) -> dict[str, Entry]:
        # substr, not LIKE: '%' and '_' in a prefix are plain characters
        rows = self._run("with_prefix", lambda db: db.execute(
            "SELECT name, uri, metadata FROM meshrpc_names WHERE substr(name, 1, ?) = ?",
            (len(prefix), prefix)).fetchall())
        return {name: self._decode(uri, meta) for name, uri, meta in rows}

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None  # type: ignore[assignment]
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass

    def __repr__(self) -> str:
        return f"<SqliteStorage {self.path}>"


def open_storage(spec: str | Storage) -> Storage:
    """A storage from its description: "memory", "sql:PATH", or a Storage object (returned as is)."""
    if isinstance(spec, Storage):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"storage must be 'memory', 'sql:PATH' or a Storage, not {type(spec).__name__}")
    if spec == "memory":
        return MemoryStorage()
    if spec.startswith("sql:") and len(spec) > 4:
        return SqliteStorage(spec[4:])
    raise ValueError(f"invalid storage {spec!r}: use 'memory' or 'sql:PATH'")


__all__ = ["MemoryStorage", "SqliteStorage", "Storage", "open_storage"]
