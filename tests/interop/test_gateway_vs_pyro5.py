"""`meshrpc gateway` and Pyro5's own gateway (`python -m Pyro5.utils.httpgateway`, as Pyro5 documents
it) side by side: the same requests against the same backend daemon give the same statuses, bodies
and headers (the Pyro5 gateway compatibility cases). The one documented difference: an unknown name
is 404 here, 500 there; both bodies are the NamingError as JSON."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from gateway_support import GatewayThread, request  # noqa: E402
from subprocs import Proc, base_env, free_port  # noqa: E402
from test_gateway import Thermostat  # noqa: E402  (the same service class as the protocol tests)

import meshrpc  # noqa: E402
from support import wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def both(realm: str, start_daemon: Any) -> Iterator[tuple[str, str]]:
    """(meshrpc gateway URL, Pyro5 gateway URL), both exposing `http\\.`, one backend daemon."""
    ns_port = free_port()
    env = base_env(realm, MESHRPC_NS_PORT=str(ns_port), PYRO_NS_HOST="127.0.0.1", PYRO_NS_PORT=str(ns_port),
                   PYTHONPATH=str(REPO))
    ns = Proc([sys.executable, "-m", "meshrpc", "ns", "--host", "127.0.0.1", "--port", str(ns_port),
               "--no-broadcast"], env)
    pyro_gateway = None
    gateway = None
    try:
        ns.expect("PYRO:")
        settings = meshrpc.config.copy(HOST="127.0.0.1", REALM=realm, NS_AUTOREGISTER=False, RESOLVE="mesh")
        daemon = start_daemon(settings=settings)
        uri = daemon.register(Thermostat(), name="http.thermo", metadata={"thermo"})
        daemon.register(Thermostat(), name="private.thermo")
        with meshrpc.Proxy(f"PYRO:Pyro.NameServer@127.0.0.1:{ns_port}") as ns_proxy:
            ns_proxy.register("http.thermo", str(uri))
            ns_proxy.register("private.thermo", str(uri))
        pyro_port = free_port()
        pyro_gateway = Proc([sys.executable, "-m", "Pyro5.utils.httpgateway", "-H", "127.0.0.1", "-p",
                             str(pyro_port), "-e", r"http\."], env)
        pyro_gateway.expect("running on")
        gateway = GatewayThread(settings)
        ours, theirs = gateway.url, f"http://127.0.0.1:{pyro_port}"
        wait_until(lambda: request(ours + "/pyro/http.thermo/echo?message=x").status == 200, 20, message="ours")
        yield ours, theirs
    finally:
        if gateway is not None:
            gateway.stop()
        for proc in (pyro_gateway, ns):
            if proc is not None:
                proc.kill()


CASES = [
    ("GET", "/pyro/http.thermo/echo?message=hello", {}),
    ("POST", "/pyro/http.thermo/add?a=4&b=2", {}),
    ("GET", "/pyro/http.thermo/target", {}),
    ("GET", "/pyro/http.thermo/echo?message=x", {"X-Pyro-Options": "oneway"}),
    ("GET", "/pyro/http.thermo/echo?message=c", {"X-Pyro-Correlation-Id": str(uuid.UUID(int=42))}),
    ("GET", "/pyro/http.thermo/fail", {}),
    ("GET", "/pyro/private.thermo/echo?message=x", {}),
    ("OPTIONS", "/pyro/http.thermo/echo", {}),
]


def test_same_answers_as_pyro5s_gateway(both: tuple[str, str]) -> None:
    ours, theirs = both
    for method, path, headers in CASES:
        a, b = request(ours + path, method, headers=headers), request(theirs + path, method, headers=headers)
        what = f"{method} {path} {headers}: meshrpc {a!r}, Pyro5 {b!r}"
        assert a.status == b.status, what
        assert a.headers.get("Access-Control-Allow-Origin") == b.headers.get("Access-Control-Allow-Origin") == "*", what
        if a.status == 200 and method != "OPTIONS":
            assert a.body == b.body or a.json() == b.json(), what
            assert a.headers["Content-Type"] == b.headers["Content-Type"], what
            if "X-Pyro-Correlation-Id" in headers:
                assert a.headers["X-Pyro-Correlation-Id"] == b.headers["X-Pyro-Correlation-Id"] == \
                    headers["X-Pyro-Correlation-Id"], what
        if a.status == 500:
            mine, pyro5s = a.json(), b.json()
            assert (mine["__class__"], mine["args"]) == (pyro5s["__class__"], pyro5s["args"]), what
            assert "too cold" in "".join(mine["attributes"]["_pyroTraceback"]), what
            assert "too cold" in "".join(pyro5s["attributes"]["_pyroTraceback"]), what


def test_meta_lists_the_same_members(both: tuple[str, str]) -> None:
    ours, theirs = both
    a, b = (request(url + "/pyro/http.thermo/$meta").json() for url in both)
    assert set(a["methods"]) == set(b["methods"]) and set(a["attributes"]) == set(b["attributes"]) == {"target"}


def test_unknown_name_is_a_naming_error_in_both(both: tuple[str, str]) -> None:
    ours, theirs = both
    a, b = (request(url + "/pyro/http.nobody/echo") for url in both)
    assert (a.status, b.status) == (404, 500)            # the documented difference
    assert a.json()["__class__"] == b.json()["__class__"] == "Pyro5.errors.NamingError"
