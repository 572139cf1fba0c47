"""Broadcast discovery of a name server between two lab hosts whose addresses were added without a
broadcast address (`ip addr add A/24`, as tools/netlab.py and many hand-made setups do; netifaces then
reports the address itself as the broadcast address). Found by w11-newcomer: `MESHRPC_HOST=0.0.0.0
meshrpc list --source ns` on one machine never found `meshrpc ns --host 0.0.0.0` on the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from test_netlab import lab_or_skip

pytestmark = [pytest.mark.timeout(60), pytest.mark.netlab]

LOCATE = ("import json, sys\n"
          "from meshrpc.naming.broadcast import broadcast_locate\n"
          "print(json.dumps([str(broadcast_locate('0.0.0.0', int(port), timeout=3) or '') for port in sys.argv[1:]]))\n")


@pytest.fixture
def lab():
    with lab_or_skip(2) as lab:
        yield lab


def _ready(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line.startswith("{"), f"the name server did not start: {line!r} (exit {proc.poll()})"
    return json.loads(line)["uri"]


def test_a_client_on_every_interface_finds_name_servers_on_the_lan_by_broadcast(lab):
    h1, h2 = lab.hosts
    shown = h2.run(["ip", "-4", "addr", "show", "dev", h2.interface], capture_output=True, text=True, check=True)
    assert " brd " not in shown.stdout, "the lab's addresses are meant to have no broadcast address here"
    env = dict(os.environ, MESHRPC_REALM="lab-" + uuid.uuid4().hex[:10], PYTHONUNBUFFERED="1")
    ns_cmd = [sys.executable, "-m", "meshrpc", "ns", "--json"]
    on_all = h1.popen([*ns_cmd, "--host", "0.0.0.0", "--port", "9090", "--bcport", "9091"],
                      stdout=subprocess.PIPE, text=True, env=env)
    on_one = h1.popen([*ns_cmd, "--host", h1.address, "--port", "9092", "--bcport", "9093"],
                      stdout=subprocess.PIPE, text=True, env=env)
    uris = [_ready(on_all), _ready(on_one)]
    found = h2.run([sys.executable, "-c", LOCATE, "9091", "9093"], capture_output=True, text=True, timeout=30,
                   env=env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == uris
