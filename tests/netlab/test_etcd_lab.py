"""The etcd registry across routers: two subnets with no multicast between them, a 3-member etcd
cluster on a third (tools/netlab.py RoutedLab; network namespaces, needs root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from test_netlab import netlab

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
from etcd_cluster import EtcdCluster, available  # noqa: E402

pytestmark = [pytest.mark.timeout(120), pytest.mark.netlab]
pytest.importorskip("etcd3gw")

SERVICE = textwrap.dedent("""
    import sys, meshrpc
    name, tags = sys.argv[1], set(sys.argv[2].split(","))
    class Svc:
        @meshrpc.expose
        def where(self):
            return name
    with meshrpc.Daemon(sys.argv[3]) as daemon:
        daemon.register(Svc(), name=name, metadata=tags)
        print("ready", flush=True)
        daemon.requestLoop()
""")

CLIENT = textwrap.dedent("""
    import json, sys, meshrpc
    from meshrpc import etcd, providers
    from meshrpc.mesh import get_registry
    from support import wait_until
    out = {}
    for uri in sys.argv[1:]:
        with meshrpc.Proxy(uri) as proxy:
            out[uri] = proxy.where()
    settings = meshrpc.config
    mirror = etcd.get_mirror(settings)
    registry = get_registry(settings)
    # the same-subnet service is heard on both sources; cross-subnet ones through etcd only
    local = __import__("os").environ["LOCAL_NAME"]
    wait_until(lambda: registry.lookup(local), 10)
    views = [("mesh", registry), ("etcd", mirror)]
    out["providers"] = {name: [(e.uri, src) for e, src in providers.merged(views, lambda v: v.lookup(name))]
                        for name in ("lab.a", "lab.b")}
    out["mesh_has"] = sorted(e.name for e in registry.list())
    out["etcd_has"] = sorted(e.name for e in mirror.list())
    print(json.dumps(out), flush=True)
""")


def test_pyroname_and_pyrometa_across_routed_subnets_without_duplicates() -> None:
    ok, why = netlab.available()
    if not ok:
        pytest.skip(why)
    ok, why = available()
    if not ok:
        pytest.skip(why)
    realm = "lab-" + uuid.uuid4().hex[:10]
    with netlab.RoutedLab((2, 2, 1)) as lab:
        h1, h2, h3, h4, h5 = lab.hosts
        assert not netlab.multicast_probe(h1, [h3])["h3"], "multicast must not cross the router"
        cluster = EtcdCluster(3, hosts=[h5.address] * 3, wrap=[h5.command([])] * 3)
        with cluster:
            env = dict(os.environ, MESHRPC_REALM=realm, MESHRPC_RESOLVE="mesh," + cluster.resolve,
                       MESHRPC_LOOKUP_TIMEOUT="10", PYTHONUNBUFFERED="1",
                       PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
            daemons = []
            for host, name, tags in ((h1, "lab.a", "lab,a"), (h3, "lab.b", "lab,b")):
                proc = host.popen([sys.executable, "-c", SERVICE, name, tags, host.address],
                                  env=dict(env, MESHRPC_HOST=host.address), stdout=subprocess.PIPE, text=True)
                assert proc.stdout.readline().strip() == "ready"
                daemons.append(proc)
            for client, local_name in ((h2, "lab.a"), (h4, "lab.b")):
                done = client.run([sys.executable, "-c", CLIENT, "PYRONAME:lab.a", "PYRONAME:lab.b",
                                   "PYROMETA:lab,b", "PYROMETA:a"],
                                  env=dict(env, MESHRPC_HOST=client.address, LOCAL_NAME=local_name), capture_output=True, text=True,
                                  timeout=90)
                assert done.returncode == 0, done.stderr[-2000:]
                out = json.loads(done.stdout.strip().splitlines()[-1])
                assert out["PYRONAME:lab.a"] == "lab.a" and out["PYRONAME:lab.b"] == "lab.b"
                assert out["PYROMETA:lab,b"] == "lab.b" and out["PYROMETA:a"] == "lab.a"
                # one provider per service, though the same-subnet one is on mDNS and in etcd
                assert [len(out["providers"][n]) for n in ("lab.a", "lab.b")] == [1, 1], out["providers"]
                # mDNS saw only its own subnet's service; etcd has both
                assert out["mesh_has"] == [local_name] and out["etcd_has"] == ["lab.a", "lab.b"]
            for proc in daemons:
                proc.terminate()
                proc.wait(10)
