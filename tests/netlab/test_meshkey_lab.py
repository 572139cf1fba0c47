"""The mesh key between lab hosts (tools/netlab.py): a rogue host announcing the same name cannot
attract a keyed client's calls.

h1 runs the real service (MESHRPC_KEY set); h2 is a rogue: a keyless daemon announcing the same
name in the same realm; h3 runs a keyed client (must always reach h1) and a keyless client (shows
that the rogue's announcements did reach h3). Everything runs inside lab namespaces, using the
helpers of test_mesh_lab.py.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from test_mesh_lab import CLIENT, SERVER, Agent, lab, spawn  # noqa: F401 - fixtures

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(120)]

CALLS = 60
NAME = "lab.keyed.service"


def test_keyed_client_always_reaches_the_keyed_service_despite_a_rogue(
        lab: Any, spawn: Callable[..., Agent], realm: str) -> None:  # noqa: F811 - fixtures
    key = {"MESHRPC_KEY": "lab-" + uuid.uuid4().hex}
    h1, h2, h3 = lab.host("h1"), lab.host("h2"), lab.host("h3")
    keyed_client = spawn(h3, CLIENT, env=key)
    keyless_client = spawn(h3, CLIENT)
    genuine = spawn(h1, SERVER, env=key)
    rogue = spawn(h2, SERVER)                       # no key: its announcements are unsigned

    registered = genuine.request("register", name=NAME, tags=["svc"])
    assert "error" not in registered, registered
    rogue_registered = rogue.request("register", name=NAME, tags=["svc"])
    assert "error" not in rogue_registered, rogue_registered
    genuine_uri = f"PYRO:{registered['object']}@{h1.address}:{registered['port']}"
    rogue_uri = f"PYRO:{rogue_registered['object']}@{h2.address}:{rogue_registered['port']}"

    # the rogue's announcement reaches h3: the keyless client sees both providers
    keyless_client.event("added", 10, name=NAME, uri=rogue_uri)
    keyless_client.event("added", 10, name=NAME, uri=genuine_uri)
    keyed_client.event("added", 10, name=NAME, uri=genuine_uri)

    reply = keyed_client.request("spread", uri=f"PYRONAME:{NAME}", count=CALLS, timeout=90)
    assert "error" not in reply, reply
    answered = Counter(answer.rsplit(" ", 1)[-1] for answer in reply["answers"])
    print(f"\n[meshkey-lab] {CALLS} PYRONAME calls from keyed h3: {dict(answered)}", flush=True)
    assert answered["h1"] == CALLS
    assert sum(answered.values()) == CALLS

    # the keyed registry never showed the rogue
    lookup = keyed_client.request("lookup", name=NAME)
    assert [e["uri"] for e in lookup["entries"]] == [genuine_uri]
    assert not keyed_client.events(uri=rogue_uri)
    keyless_lookup = keyless_client.request("lookup", name=NAME)
    assert sorted(e["uri"] for e in keyless_lookup["entries"]) == sorted([genuine_uri, rogue_uri])
