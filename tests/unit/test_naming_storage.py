"""Name-server storage back-ends: the same contract for memory and sqlite; sqlite persistence."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from meshrpc.errors import NamingError
from meshrpc.naming.storage import MemoryStorage, SqliteStorage, Storage, open_storage

pytestmark = pytest.mark.timeout(60)

URI_A = "PYRO:obj_a@127.0.0.1:5001"
URI_B = "PYRO:obj_b@127.0.0.1:5002"


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path) -> Storage:
    store = MemoryStorage() if request.param == "memory" else SqliteStorage(str(tmp_path / "ns.db"))
    yield store
    store.close()


def test_put_get_replace(storage: Storage) -> None:
    assert storage.get("a") is None
    assert storage.count() == 0
    assert storage.put("a", URI_A, {"x", "y"})
    assert storage.get("a") == (URI_A, frozenset({"x", "y"}))
    assert storage.put("a", URI_B)
    assert storage.get("a") == (URI_B, frozenset())
    assert storage.count() == 1
    assert "a" in storage and "b" not in storage


def test_put_only_if_absent(storage: Storage) -> None:
    assert storage.put("a", URI_A, only_if_absent=True)
    assert not storage.put("a", URI_B, {"t"}, only_if_absent=True)
    assert storage.get("a") == (URI_A, frozenset())


def test_set_metadata(storage: Storage) -> None:
    assert not storage.set_metadata("missing", {"t"})
    storage.put("a", URI_A, {"old"})
    assert storage.set_metadata("a", {"new", "tags"})
    assert storage.get("a") == (URI_A, frozenset({"new", "tags"}))
    assert storage.set_metadata("a", ())
    assert storage.get("a") == (URI_A, frozenset())


def test_remove_and_remove_entries(storage: Storage) -> None:
    for name in ("a", "b", "c"):
        storage.put(name, URI_A)
    assert storage.remove(["a", "missing"]) == 1
    assert storage.remove([]) == 0
    storage.put("b", URI_B)  # re-registered: a compare-and-delete for the old uri must leave it
    assert storage.remove_entries([("b", URI_A), ("c", URI_A)]) == 1
    assert storage.get("b") == (URI_B, frozenset())
    assert storage.get("c") is None


def test_items_prefix_and_metadata_search(storage: Storage) -> None:
    storage.put("shop.cart", URI_A, {"shop", "cart"})
    storage.put("shop.till", URI_B, {"shop"})
    storage.put("other", URI_A, {"misc"})
    storage.put("50%_off", URI_A)   # LIKE wildcards in names are plain characters
    storage.put("5000", URI_B)
    assert set(storage.items()) == {"shop.cart", "shop.till", "other", "50%_off", "5000"}
    assert set(storage.with_prefix("shop.")) == {"shop.cart", "shop.till"}
    assert set(storage.with_prefix("50%")) == {"50%_off"}
    assert set(storage.with_prefix("5_")) == set()
    assert storage.with_prefix("shop.c") == {"shop.cart": (URI_A, frozenset({"shop", "cart"}))}
    assert set(storage.with_metadata(meta_all=frozenset({"shop"}))) == {"shop.cart", "shop.till"}
    assert set(storage.with_metadata(meta_all=frozenset({"shop", "cart"}))) == {"shop.cart"}
    assert set(storage.with_metadata(meta_any=frozenset({"cart", "misc"}))) == {"shop.cart", "other"}
    assert storage.with_metadata() == {}


def test_hostile_strings_are_data(storage: Storage) -> None:
    names = ["'; DROP TABLE meshrpc_names; --", 'a"b', "unicode ☃ name", "x" * 1024, "\x00nul"]
    for name in names:
        storage.put(name, URI_A, {"'); DELETE FROM meshrpc_names; --"})
    for name in names:
        assert storage.get(name) == (URI_A, frozenset({"'); DELETE FROM meshrpc_names; --"}))
    assert storage.count() == len(names)


def test_concurrent_writers(storage: Storage) -> None:
    threads, per_thread = 8, 60
    errors: list[BaseException] = []
    winners: list[str] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                storage.put(f"t{t}.n{i}", f"PYRO:o{i}@127.0.0.1:{1000 + t}", {f"t{t}"})
                assert storage.get(f"t{t}.n{i}") is not None
                if storage.put("contested", f"PYRO:c@127.0.0.1:{2000 + t}", only_if_absent=True):
                    winners.append(f"t{t}")
                storage.items()
            storage.remove([f"t{t}.n0"])
        except BaseException as exc:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not errors, errors
    assert len(winners) == 1
    assert storage.count() == threads * (per_thread - 1) + 1
    for t in range(threads):
        assert len(storage.with_metadata(meta_all=frozenset({f"t{t}"}))) == per_thread - 1


def test_sqlite_survives_reopen_and_uses_wal(tmp_path) -> None:
    path = str(tmp_path / "ns.db")
    with SqliteStorage(path) as store:
        store.put("kept", URI_A, {"t1", "t2"})
        store.put("gone", URI_B)
        store.remove(["gone"])
    with SqliteStorage(path) as store:
        assert store.get("kept") == (URI_A, frozenset({"t1", "t2"}))
        assert store.get("gone") is None
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        db.close()


def test_sqlite_two_storages_share_a_file(tmp_path) -> None:
    path = str(tmp_path / "ns.db")
    with SqliteStorage(path) as one, SqliteStorage(path) as two:
        one.put("a", URI_A)
        assert two.get("a") == (URI_A, frozenset())


def test_sqlite_rejects_bad_files(tmp_path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(NamingError, match="storage error"):
        SqliteStorage(str(junk))
    with pytest.raises(NamingError, match="does not exist"):
        SqliteStorage(str(tmp_path / "no" / "such" / "dir.db"))
    with pytest.raises(ValueError):
        SqliteStorage(":memory:")
    other = tmp_path / "other.db"
    db = sqlite3.connect(str(other))
    db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(NamingError, match="schema version 7"):
        SqliteStorage(str(other))


def test_sqlite_closed_storage_raises(tmp_path) -> None:
    store = SqliteStorage(str(tmp_path / "ns.db"))
    store.close()
    store.close()
    with pytest.raises(NamingError, match="closed"):
        store.get("a")


def test_open_storage(tmp_path) -> None:
    assert isinstance(open_storage("memory"), MemoryStorage)
    store = open_storage(f"sql:{tmp_path / 'x.db'}")
    assert isinstance(store, SqliteStorage)
    store.close()
    mine = MemoryStorage()
    assert open_storage(mine) is mine
    for bad in ("sql:", "sqlite:x", "", "MEMORY"):
        with pytest.raises(ValueError):
            open_storage(bad)
    with pytest.raises(TypeError):
        open_storage(42)  # type: ignore[arg-type]
