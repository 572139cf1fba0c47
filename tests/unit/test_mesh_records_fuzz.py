"""Property tests of the TXT codec: whatever arrives from the network, decoding never raises, and
whatever we can publish decodes back to itself."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrpc.errors import NamingError
from meshrpc.mesh import records

pytestmark = pytest.mark.timeout(60)
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80)
tags = st.frozensets(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=","),
                             min_size=1, max_size=20), max_size=8)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_txt_never_raises(txt):
    decoded, why = records.decode(txt, realm="r1")
    assert decoded is None or isinstance(decoded, (records.Entry, records.Heartbeat))
    assert decoded is not None or why


@FUZZ
@given(names, tags, st.integers(1, 2 ** 31), st.integers(0, 2 ** 31))
def test_published_entries_round_trip_and_mutations_never_raise(name, metadata, incarnation, version):
    try:
        entry = records.make_entry(realm="r1", name=name, uri="PYRO:obj@127.0.0.1:4000", metadata=metadata,
                                   node="node1", incarnation=incarnation, version=version)
        txt = records.encode_entry(entry)
    except NamingError:
        return  # refused at publish time with a clear error: never silently dropped
    decoded, why = records.decode(txt, realm="r1", label=records.instance_label(entry))
    assert decoded == entry, why
    assert records.decode(txt, realm="another")[0] is None  # other realms are ignored
    for cut in (1, len(txt) // 2, len(txt) - 1):  # truncated and corrupted records: ignored, no crash
        records.decode(txt[:cut], realm="r1")
        records.decode(txt[:cut] + b"\xff" + txt[cut + 1:], realm="r1")
