"""Helpers for the etcd registry's tests: a real cluster per test module, daemons in child processes,
and a TCP relay that can cut a client off from etcd (connections go silent, as behind a dead link)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from etcd_cluster import EtcdCluster, available  # noqa: E402

__all__ = ["EtcdCluster", "Relay", "available", "daemon_process", "DAEMON_SCRIPT"]

# A daemon in a child process: registers the names given as arguments (name=tag,tag ...), prints READY
# and serves until killed or until stdin closes (a graceful shutdown).
DAEMON_SCRIPT = r"""
import sys, threading, meshrpc
class Echo:
    @meshrpc.expose
    def echo(self, value):
        return value
    @meshrpc.expose
    def where(self):
        return sys.argv[1]
daemon = meshrpc.Daemon(host="127.0.0.1")
for item in sys.argv[1:]:
    name, _, tags = item.partition("=")
    daemon.register(Echo(), name=name, metadata=set(filter(None, tags.split(","))))
threading.Thread(target=lambda: (sys.stdin.read(), daemon.shutdown()), daemon=True).start()
print("READY", flush=True)
daemon.requestLoop()
print("STOPPED", flush=True)
"""


def daemon_process(env: dict[str, str], *names: str) -> subprocess.Popen:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHRPC_", "PYRO_"))}
    child_env.update(env)
    child_env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-c", DAEMON_SCRIPT, *names], env=child_env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()          # blocks until the child printed READY (or died)
    assert line.strip() == "READY", f"daemon did not start: {line!r}"
    return proc


class Relay:
    """Forwards 127.0.0.1:<port> to target; cut() makes every connection (old and new) silent,
    heal() lets traffic through again (connections opened during the cut stay dead, as after a
    real outage: the client must reconnect)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._cut.set()

    def heal(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:            # what was open during the cut is dead for good
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self.heal()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                with self._lock:           # accepted, never answered: a connect that goes nowhere
                    self._pairs.append((client, client))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.2)
                if self._cut.is_set():
                    self._closed.wait(0.05)    # pass nothing while the link is down
                    continue
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


def make_etcd_certs(root: Path) -> dict[str, str]:
    """A CA, a member certificate (serverAuth and clientAuth: etcd's gateway dials its own gRPC server
    with it), a client certificate, and another CA (for the wrong-CA case). Needs the openssl command."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{ca}-key.pem", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN={ca}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage in (("member", "serverAuth,clientAuth"), ("client", "clientAuth")):
        # no CN: with auth on, etcd would take a CN for the user name, and refuses one on the gateway's own
        # connection ("CommonName of client sending a request against gateway will be ignored")
        run("req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/O=meshrpc {name}")
        (root / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                          f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {name: str(root / f"{name}.pem") for name in ("ca", "other-ca", "member", "client")} | \
        {f"{name}_key": str(root / f"{name}-key.pem") for name in ("member", "client")}
