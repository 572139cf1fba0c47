"""`meshrpc browse --lan` between two hosts of the network lab (tools/netlab.py): only inside lab
namespaces may discovery listen beyond loopback. Host A serves `meshrpc echo` on 0.0.0.0; on host B,
`browse --lan` sees it at A's address, and a plain `browse` (loopback only) does not, with a hint; the
same for `lookup` and `call` by name (a failed lookup names --lan), and `gateway --lan` (HTTP on B's
loopback) shows and calls it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_netlab import _require_netlab, netlab

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(120)]


def test_browse_lan_sees_another_host() -> None:
    _require_netlab()
    realm = "lab-" + uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHRPC_", "PYRO_"))}
    env.update(MESHRPC_REALM=realm, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cli = [sys.executable, "-m", "meshrpc"]
    with netlab.Lab(2) as lab:
        server, browser = lab.hosts
        echo = server.popen([*cli, "echo", "--host", "0.0.0.0", "--name", "lan.echo", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert echo.stdout is not None
        uri = json.loads(echo.stdout.readline())["uri"]
        assert server.address in uri, uri
        found = browser.run([*cli, "browse", "--lan", "--json", "--timeout", "10"], env=env,
                            capture_output=True, text=True, timeout=60)
        rows = json.loads(found.stdout)
        assert [(r["name"], r["host"]) for r in rows] == [("lan.echo", server.address)], found
        local = browser.run([*cli, "browse", "--timeout", "1"], env=env, capture_output=True, text=True, timeout=60)
        assert local.returncode == 0 and local.stdout == "" and "--lan" in local.stderr, local
        looked = browser.run([*cli, "lookup", "lan.echo", "--lan", "--json", "--timeout", "10"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert looked.returncode == 0 and [r["uri"] for r in json.loads(looked.stdout)] == [uri], looked
        called = browser.run([*cli, "call", "PYRONAME:lan.echo", "echo", "over.the.lan", "--lan", "--json",
                              "--timeout", "10"], env=env, capture_output=True, text=True, timeout=60)
        assert called.returncode == 0 and json.loads(called.stdout) == {"result": "over.the.lan"}, called
        unheard = browser.run([*cli, "call", "PYRONAME:lan.echo", "echo", "x", "--timeout", "1"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert unheard.returncode == 1 and "--lan" in unheard.stderr, unheard
        # the gateway: HTTP on B's loopback, the mesh of the LAN behind it
        gateway = browser.popen([*cli, "gateway", "--lan", "--port", "0", "--expose", r"lan\.", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert gateway.stdout is not None
            url = json.loads(gateway.stdout.readline())["url"].rstrip("/")
            fetch = ("import json, sys, time, urllib.request\n"
                     "deadline = time.monotonic() + 20\n"
                     "while True:\n"
                     "    mesh = json.load(urllib.request.urlopen(sys.argv[1] + '/mesh', timeout=5))\n"
                     "    hosts = {e['name']: e['host'] for e in mesh['entries']}\n"
                     "    if 'lan.echo' in hosts or time.monotonic() > deadline: break\n"
                     "    time.sleep(0.2)\n"
                     "print(json.dumps(hosts))\n"
                     "try:\n"
                     "    print(urllib.request.urlopen(sys.argv[1] + '/pyro/lan.echo/echo?message=hi', timeout=10).read().decode())\n"
                     "except urllib.error.HTTPError as e:\n"
                     "    print(e.read().decode())\n")
            seen = browser.run([sys.executable, "-c", fetch, url], env=env, capture_output=True, text=True, timeout=60)
            assert seen.returncode == 0, seen
            hosts, reply = seen.stdout.splitlines()
            assert json.loads(hosts).get("lan.echo") == server.address and json.loads(reply) == "hi", seen
        finally:
            gateway.terminate()
            gateway.wait(15)
        echo.terminate()
        echo.wait(15)
