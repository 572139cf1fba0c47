"""Wire pieces of the mesh's anti-entropy and loss handling: heartbeat digests, index pages, their
signatures, question packets, and how a proxy's failure is classified. Pure, no network."""

from __future__ import annotations

import pytest

from meshrpc.errors import CommunicationError
from meshrpc.mesh import auth, records
from meshrpc.wire import constants
from meshrpc.mesh.discovery import _question_chunks
from meshrpc.resolve import failure_kind

pytestmark = pytest.mark.timeout(30)


def test_digest_depends_on_the_set_of_labels_and_versions_only() -> None:
    items = [("b-123", 2), ("A-456", 1)]
    assert records.entries_digest(items) == records.entries_digest(list(reversed(items)))
    assert records.entries_digest(items) == records.entries_digest([("a-456", 1), ("b-123", 2)])
    assert records.entries_digest(items) != records.entries_digest([("b-123", 3), ("A-456", 1)])
    assert records.entries_digest(items) != records.entries_digest(items[:1])


def test_heartbeat_with_digest_round_trips_and_old_heartbeats_still_decode() -> None:
    hb = records.Heartbeat("r", "n1", 5, 7, count=3, digest="0123abcd")
    decoded, why = records.decode(records.encode_heartbeat(hb), label="mrhb-n1")
    assert why == "" and decoded == hb and decoded.count == 3 and decoded.digest == "0123abcd"
    plain = records.Heartbeat("r", "n1", 5, 8)
    decoded, _ = records.decode(records.encode_heartbeat(plain), label="mrhb-n1")
    assert decoded.count == -1 and decoded.digest == ""
    bad = records.encode_heartbeat(hb).replace(b"0123abcd", b"nothex!!")
    assert records.decode(bad, label="mrhb-n1") == (None, "bad digest")


def test_index_pages_split_and_round_trip_within_one_txt() -> None:
    items = [(f"{'x' * 50}-{i:012x}", 2 ** 40 + i) for i in range(40)]     # long labels, big versions
    pages = records.index_pages("realm", "node1", 9, 77, items)
    assert [p.page for p in pages] == [0, 1, 2] and {p.pages for p in pages} == {3}
    assert records.index_page_count(40) == 3 and records.index_page_count(0) == 1
    for page in pages:
        text = records.encode_index_page(page)
        assert len(text) <= constants.MESH_TXT_ADVISED_MAX
        decoded, why = records.decode(text, label=records.index_label("node1", page.page))
        assert why == "" and decoded == page
    assert records.decode(records.encode_index_page(pages[1]), label=records.index_label("node1", 0))[0] is None
    empty = records.index_pages("realm", "node1", 9, 0, [])
    assert len(empty) == 1 and records.decode(records.encode_index_page(empty[0]), label="mrix0-node1")[0] == empty[0]
    name = records.index_name("node1", 2)
    assert records.label_of(name, constants.MESH_INDEX_SERVICE_TYPE) == "mrix2-node1" and records.label_of(name) is None


def test_signed_digests_and_index_pages_verify_and_tampering_is_caught() -> None:
    key = "secret"
    hb = auth.sign(key, records.Heartbeat("r", "n1", 1, 1, count=2, digest="00000000"))
    assert auth.verify(key, hb) == ""
    from dataclasses import replace
    assert auth.verify(key, replace(hb, count=3)) != ""
    page = auth.sign(key, records.index_pages("r", "n1", 1, 4, [("a-1", 1)])[0])
    decoded, _ = records.decode(records.encode_index_page(page), label="mrix0-n1")
    assert auth.verify(key, decoded) == ""
    assert auth.verify(key, replace(decoded, items=(("a-1", 2),))) != ""
    assert auth.verify("other", decoded) != ""


def test_questions_are_split_into_packets_that_fit() -> None:
    names = [f"{'y' * 60}-{i:04d}._meshrpc._tcp.local." for i in range(100)]
    chunks = _question_chunks(names)
    assert sum(chunks, []) == names
    assert all(sum(len(n) + 6 for n in chunk) <= 1200 for chunk in chunks) and len(chunks) > 5
    assert _question_chunks([]) == []


def test_a_proxys_failure_is_classified_by_its_cause() -> None:
    assert failure_kind(None) == "unreachable"
    assert failure_kind(CommunicationError("cannot connect to h:1: connection refused (is the daemon "
                                           "running?)")) == "refused"
    try:
        try:
            raise ConnectionRefusedError(111, "nope")
        except OSError as exc:
            raise CommunicationError("wrapped") from exc
    except CommunicationError as wrapped:
        assert failure_kind(wrapped) == "refused"
    assert failure_kind(CommunicationError("PYRO:x@h:1 is shutting down; f was not run")) == "shutdown"
    assert failure_kind(CommunicationError("handshake with h:1 failed")) == "handshake"
    assert failure_kind(TimeoutError("connecting to h:1 timed out")) == "unreachable"
