"""Unit tests of meshrpc.uri: the URI grammar, the value type and Pyro5 state compatibility."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrpc.errors import MeshError
from meshrpc.uri import URI, InvalidURIError
from meshrpc.wire.constants import NS_DEFAULT_PORT

try:  # the reference peer (a test dependency); only the cross-checks need it
    import Pyro5.core
    import Pyro5.errors
except ImportError:  # pragma: no cover
    Pyro5 = None

pytestmark = pytest.mark.timeout(30)
needs_pyro5 = pytest.mark.skipif(Pyro5 is None, reason="Pyro5 is not installed")

# text, protocol, object, host, port, sockname
FORMS = [
    ("PYRO:obj@localhost:9999", "PYRO", "obj", "localhost", 9999, None),
    ("PYRO:obj_1.x-y@10.0.0.1:1", "PYRO", "obj_1.x-y", "10.0.0.1", 1, None),
    ("PYRO:obj@./u:/tmp/some.sock", "PYRO", "obj", None, None, "/tmp/some.sock"),
    ("PYRO:obj@[::1]:9999", "PYRO", "obj", "::1", 9999, None),
    ("PYRO:obj@[fe80::1:2]:65535", "PYRO", "obj", "fe80::1:2", 65535, None),
    ("PYRONAME:some.name", "PYRONAME", "some.name", None, None, None),
    ("PYRONAME:some.name@nshost:9999", "PYRONAME", "some.name", "nshost", 9999, None),
    ("PYRONAME:some.name@[::1]:9999", "PYRONAME", "some.name", "::1", 9999, None),
    # as in Pyro5: no location means port None, and a PYROMETA object is its set of tags
    ("PYROMETA:a,b", "PYROMETA", {"a", "b"}, None, None, None),
    ("PYROMETA:a,b@nshost:1234", "PYROMETA", {"a", "b"}, "nshost", 1234, None),
    ("PYROMETA:single", "PYROMETA", {"single"}, None, None, None),
]


@pytest.mark.parametrize("text, protocol, obj, host, port, sockname", FORMS)
def test_documented_forms_parse(text, protocol, obj, host, port, sockname):
    uri = URI(text)
    assert (uri.protocol, uri.object, uri.host, uri.port, uri.sockname) == (protocol, obj, host, port, sockname)
    assert uri.is_direct == (protocol == "PYRO")


@pytest.mark.parametrize("text", [f[0] for f in FORMS])
def test_str_round_trip(text):
    uri = URI(text)
    assert str(uri) == text
    assert URI(str(uri)) == uri
    assert repr(uri) == f"<meshrpc.URI {text}>"


def test_location_property():
    assert URI("PYRO:o@h:5").location == "h:5"
    assert URI("PYRO:o@[::1]:5").location == "[::1]:5"
    assert URI("PYRO:o@./u:/s").location == "./u:/s"
    assert URI("PYRONAME:n").location is None


def test_name_server_location_without_port_gets_the_default_port():
    uri = URI("PYRONAME:name@nshost")
    assert (uri.host, uri.port) == ("nshost", NS_DEFAULT_PORT)
    assert str(uri) == f"PYRONAME:name@nshost:{NS_DEFAULT_PORT}"
    assert URI("PYROMETA:t@nshost").port == NS_DEFAULT_PORT


@pytest.mark.parametrize("text, canonical", [
    ("pyro:obj@host:1", "PYRO:obj@host:1"),
    ("Pyro:obj@host:1", "PYRO:obj@host:1"),
    ("pyroname:n", "PYRONAME:n"),
    ("PyroMeta:a,b", "PYROMETA:a,b"),
])
def test_lower_case_protocol_accepted(text, canonical):
    assert str(URI(text)) == canonical
    assert URI(text) == URI(canonical)


def test_surrounding_whitespace_is_ignored():
    assert URI("  PYRO:obj@host:1\n") == URI("PYRO:obj@host:1")


def test_object_id_is_case_sensitive_and_may_contain_colons():
    assert URI("PYRO:Obj@h:1") != URI("PYRO:obj@h:1")
    assert URI("PYRO:a:b@h:1").object == "a:b"


def test_tags():
    assert URI("PYROMETA:a,b,c").tags == frozenset({"a", "b", "c"})
    assert URI("PYROMETA:x@h:1").tags == frozenset({"x"})
    assert URI("PYROMETA:a,,b").tags == frozenset({"a", "b"})
    assert URI("PYRO:o@h:1").tags == frozenset()
    assert URI("PYRONAME:a,b").tags == frozenset()


def test_equality_and_hash():
    a, b = URI("PYRO:obj@host:1"), URI("pyro:obj@host:1")
    assert a == b and hash(a) == hash(b)
    assert len({a, b, URI("PYRO:obj@host:2")}) == 2
    assert a != URI("PYRONAME:obj@host:1")
    assert a != "PYRO:obj@host:1"  # a URI is not a string
    assert (a == "PYRO:obj@host:1") is False
    assert URI(a) == a and URI(a) is not a


def test_from_parts():
    assert URI.from_parts("obj", "host", 5) == URI("PYRO:obj@host:5")
    assert URI.from_parts("obj", sockname="/s") == URI("PYRO:obj@./u:/s")
    assert str(URI.from_parts("obj", "::1", 7)) == "PYRO:obj@[::1]:7"


def test_wrong_type_is_type_error():
    with pytest.raises(TypeError, match="str or URI"):
        URI(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        URI(b"PYRO:obj@host:1")  # type: ignore[arg-type]


def test_uri_is_picklable_and_copyable():
    import copy
    uri = URI("PYRO:obj@[::1]:4")
    assert pickle.loads(pickle.dumps(uri)) == uri
    assert copy.copy(uri) == uri and copy.deepcopy(uri) == uri


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, fragment", [
    ("PYRO:obj@host", "need a port"),
    ("PYRO:obj@[::1]", "need a port"),
    ("PYRO:obj@host:0", "need a port"),
    ("PYRO:obj@host:abc", "bad location"),
    ("PYRO:obj@host:-1", "bad location"),
    ("PYRO:obj@host:+5", "bad location"),
    ("PYRO:obj@host:99999", "out of range"),
    ("PYRO:obj@host:65536", "out of range"),
    ("PYRO:@host:1", "object id is empty"),
    ("PYRONAME:", "name is empty"),
    ("PYRONAME:@host:1", "name is empty"),
    ("PYROMETA:,", "at least one tag"),
    ("PYRO:ob j@host:1", "whitespace"),
    ("PYRO:obj@ho st:1", "whitespace"),
    ("PYRO:obj\t@host:1", "whitespace"),
    ("HTTP:obj@host:1", "expected PYRO:"),
    ("PYROX:obj@host:1", "expected PYRO:"),
    ("obj@host:1", "expected PYRO:"),
    ("", "expected PYRO:"),
    ("PYRO", "expected PYRO:"),
    ("PYRONAME:name@./u:/tmp/sock", "unix sockets only with PYRO"),
    ("PYROMETA:a@./u:/tmp/sock", "unix sockets only with PYRO"),
    ("PYRO:obj", "need a location"),
    ("PYRO:obj@", "need a location"),
    ("PYRO:obj@:1", "bad location"),
    ("PYRO:obj@::1:5", "bad location"),
    ("PYRO:obj@./u:", "bad location"),
    ("PYRO:obj@host:1:2", "bad location"),
])
def test_malformed_uris_have_clear_messages(text, fragment):
    with pytest.raises(InvalidURIError) as info:
        URI(text)
    message = str(info.value)
    assert fragment in message.replace("URIs need", "need"), message
    assert repr(text.strip()) in message  # the message quotes the offending input


def test_invalid_uri_error_is_a_value_error_and_a_mesh_error():
    assert issubclass(InvalidURIError, ValueError)
    assert issubclass(InvalidURIError, MeshError)


@pytest.mark.parametrize("text", ["PYRO:obj@host:\u0663", "PYRO:obj@host:\uff15"])
def test_non_ascii_digits_are_not_a_port(text):
    # BUG (minor, meshrpc/uri.py _LOCATION): `\d` matches any Unicode digit, so "PYRO:obj@host:٣" parses
    # as port 3 and str() no longer round-trips. Fix: use [0-9] (or compile with re.ASCII).
    with pytest.raises(InvalidURIError):
        URI(text)


@pytest.mark.parametrize("text", ["PYRO:obj@[localhost]:5", "PYRO:obj@[zz]:5"])
def test_brackets_only_for_ipv6_literals(text):
    # minor (meshrpc/uri.py _LOCATION): the bracket class [0-9a-fA-F:.%a-zA-Z] accepts any word, so
    # "[localhost]" parses as host "localhost" and str() gives "PYRO:obj@localhost:5" (no round trip).
    # Fix: require a ':' inside the brackets (an IPv6 literal), e.g. validate with ipaddress.
    with pytest.raises(InvalidURIError):
        URI(text)


# --------------------------------------------------------------------------- hypothesis

_word = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", min_size=1, max_size=15)


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(obj=_word, host=_word.filter(lambda h: not h.startswith("./u")), port=st.integers(1, 65535),
       protocol=st.sampled_from(["PYRO", "PYRONAME", "PYROMETA"]))
def test_hypothesis_str_round_trip(obj, host, port, protocol):
    text = f"{protocol}:{obj}@{host}:{port}"
    uri = URI(text)
    assert str(uri) == text
    assert (uri.object, uri.host, uri.port) == ({obj} if protocol == "PYROMETA" else obj, host, port)
    assert URI(str(uri)) == uri and hash(URI(str(uri))) == hash(uri)


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(text=st.text(max_size=40))
def test_hypothesis_any_text_parses_or_raises_invalid_uri_error(text):
    try:
        uri = URI(text)
    except InvalidURIError:
        return
    assert URI(str(uri)) == uri


# --------------------------------------------------------------------------- Pyro5 state compatibility

def test_state_tuple_layout():
    uri = URI("PYRO:obj@host:5")
    assert uri.__getstate__() == ("PYRO", "obj", None, "host", 5)
    assert URI("PYRO:obj@./u:/s").__getstate__()[:4] == ("PYRO", "obj", "/s", None)
    assert uri.__wire_dict__() == {"__class__": "Pyro5.core.URI", "state": ("PYRO", "obj", None, "host", 5)}


def _from_state(state: tuple) -> URI:
    uri = URI.__new__(URI)
    uri.__setstate__(state)
    return uri


@needs_pyro5
@pytest.mark.parametrize("text", ["PYRO:obj@localhost:9999", "PYRO:obj@[::1]:9999", "PYRONAME:some.name@nshost:9999",
                                  "PYRONAME:some.name@nshost"])
def test_state_identical_to_pyro5(text):
    ours, theirs = URI(text), Pyro5.core.URI(text)
    assert ours.__getstate__() == theirs.__getstate__()
    assert str(ours) == str(theirs)


@needs_pyro5
@pytest.mark.parametrize("text", ["PYRO:obj@./u:/tmp/sock", "PYRONAME:some.name"])
def test_uri_from_pyro5_state_equals_the_parsed_one(text):
    # BUG (meshrpc/uri.py, _parse/__setstate__/_key): without a host/port meshrpc stores port 0 where
    # Pyro5 has None. A URI that arrives from a Pyro5 peer (state port None) therefore is != and hashes
    # differently from URI(the same text) (e.g. a PYRONAME or unix-socket URI used as a dict key or cache
    # key). Fix: normalize in __setstate__ (port = state[4] or 0) — or use None like Pyro5 everywhere.
    theirs = Pyro5.core.URI(text)
    received = _from_state(theirs.__getstate__())
    assert received == URI(text), (received.__getstate__(), URI(text).__getstate__())
    assert hash(received) == hash(URI(text))
    assert str(received) == text


@needs_pyro5
@pytest.mark.parametrize("text", [f[0] for f in FORMS if not f[0].startswith("PYROMETA")])
def test_pyro5_rebuilds_our_state(text):
    theirs = Pyro5.core.URI.__new__(Pyro5.core.URI)
    theirs.__setstate__(URI(text).__getstate__())
    assert str(theirs) == text
    assert theirs.location == URI(text).location


@needs_pyro5
@pytest.mark.parametrize("text", ["PYROMETA:a,b", "PYROMETA:a,b@nshost:1234"])
def test_pyrometa_state_compatible_with_pyro5(text):
    # BUG (meshrpc/uri.py, __getstate__/__setstate__/tags): Pyro5 keeps a PYROMETA URI's object as a *set*
    # of tags and its state carries that set; meshrpc keeps the string "a,b". So Pyro5 prints our URI as
    # "PYROMETA:a,,,b" (",".join over the characters), and a URI from Pyro5 breaks meshrpc's `tags`
    # (AttributeError: 'set' object has no attribute 'split') and str(). Fix: for PYROMETA put a set
    # (tuple/list for json/msgpack) of tags in the state, and accept a set/list/tuple in __setstate__.
    ours = URI(text)
    theirs = Pyro5.core.URI.__new__(Pyro5.core.URI)
    theirs.__setstate__(ours.__getstate__())
    assert theirs.object == {"a", "b"}
    received = _from_state(Pyro5.core.URI(text).__getstate__())
    assert received.tags == frozenset({"a", "b"})
    assert received == ours


@needs_pyro5
@pytest.mark.parametrize("text", [f[0] for f in FORMS] + ["pyro:obj@h:1", "PYRONAME:n@h"])
def test_pyro5_and_meshrpc_accept_the_same_documented_forms(text):
    assert str(URI(text)) == str(URI(str(Pyro5.core.URI(text)))) or text.startswith("PYROMETA")
