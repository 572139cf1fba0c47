#!/usr/bin/env python3
"""A real etcd cluster of N members for tests and benchmarks (Debian's `etcd-server` package).

    with EtcdCluster(3) as cluster:          # loopback ports, a temporary data dir per member
        cluster.endpoints                    # ["127.0.0.1:40001", ...]
        cluster.resolve                      # "etcd://127.0.0.1:40001,127.0.0.1:40003,..." for RESOLVE
        cluster.kill(cluster.leader())       # kill -9 one member (the leader)
        cluster.restart(index)

Ports are free ephemeral ports picked at start (a start that loses a port race is retried); start-up
waits on every member's /health, bounded. `wrap` puts a member inside a network namespace
(a command prefix such as ["ip", "netns", "exec", "lab-h3"]) listening on `hosts[i]`.

CLI: python tools/etcd_cluster.py [N]   (prints the endpoints and keeps the cluster until Ctrl-C)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 30.0          # seconds a cluster has to become healthy
HEARTBEAT_MS = 100            # etcd's defaults, spelled out: elections take about a second
ELECTION_MS = 1000


class EtcdClusterError(RuntimeError):
    pass


def available() -> tuple[bool, str]:
    if not os.path.exists(ETCD):
        return False, "etcd is not installed (apt-get install etcd-server)"
    return True, ""


def _free_ports(host: str, count: int) -> list[int]:
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (no orphaned members
    after a killed test run or benchmark)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class EtcdCluster:
    def __init__(self, size: int = 3, *, hosts: Sequence[str] | None = None,
                 wrap: Sequence[Sequence[str]] | None = None, base_dir: str | None = None) -> None:
        self.size = size
        self.hosts = list(hosts or ["127.0.0.1"] * size)
        self.wrap = [list(w) for w in wrap] if wrap else [[] for _ in range(size)]
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="meshrpc-etcd-")
        self.token = "meshrpc-" + os.urandom(4).hex()
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.client_ports: list[int] = []
        self.peer_ports: list[int] = []
        self.extra_args: list[str] = []
        # client TLS: {"cert", "key", "ca"} of the members, {"client_cert", "client_key"} for our checks
        self.tls: dict[str, str] = {}

    # ------------------------------------------------------------------ addresses
    @property
    def endpoints(self) -> list[str]:
        return [f"{h}:{p}" for h, p in zip(self.hosts, self.client_ports)]

    @property
    def resolve(self) -> str:
        """The RESOLVE item naming this cluster."""
        return ("etcds://" if self.tls else "etcd://") + ",".join(self.endpoints)

    def url(self, index: int) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoints[index]}"

    def _ssl_context(self) -> object:
        import ssl
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.tls["ca"])
        context.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return context

    # ------------------------------------------------------------------ life cycle
    def start(self) -> EtcdCluster:
        last: Exception | None = None
        for _ in range(3):                     # a port taken between picking and binding: pick again
            try:
                self._start_once()
                return self
            except EtcdClusterError as exc:
                last = exc
                self.stop()
        raise EtcdClusterError(f"etcd cluster did not start: {last}")

    def _start_once(self) -> None:
        self.client_ports, self.peer_ports = [], []
        for host in self.hosts:
            if host.startswith("127."):
                c, p = _free_ports(host, 2)
            else:                               # inside a lab namespace: nothing else listens there
                c = 2379 + 10 * len(self.client_ports)
                p = c + 1
            self.client_ports.append(c)
            self.peer_ports.append(p)
        for i in range(self.size):
            self._spawn(i, "new")
        self.wait_healthy(range(self.size))

    def _member_args(self, i: int, state: str) -> list[str]:
        cluster = ",".join(f"m{j}=http://{self.hosts[j]}:{self.peer_ports[j]}" for j in range(self.size))
        data = os.path.join(self.base_dir, f"m{i}")
        return [ETCD, "--name", f"m{i}", "--data-dir", data,
                "--listen-client-urls", self.url(i), "--advertise-client-urls", self.url(i),
                "--listen-peer-urls", f"http://{self.hosts[i]}:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://{self.hosts[i]}:{self.peer_ports[i]}",
                "--initial-cluster", cluster, "--initial-cluster-token", self.token,
                "--initial-cluster-state", state,
                "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
                *(["--cert-file", self.tls["cert"], "--key-file", self.tls["key"], "--trusted-ca-file",
                   self.tls["ca"], "--client-cert-auth"] if self.tls else []),
                *self.extra_args]

    def _spawn(self, i: int, state: str) -> None:
        log = open(os.path.join(self.base_dir, f"m{i}.log"), "ab")
        try:
            self.procs[i] = subprocess.Popen(self.wrap[i] + self._member_args(i, state), stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=_die_with_parent)
        finally:
            log.close()

    def health(self, i: int, timeout: float = 1.0) -> bool:
        if self.wrap[i]:                        # inside a namespace: ask from there
            code = ("import json,sys,urllib.request\n"
                    f"r=urllib.request.urlopen({self.url(i) + '/health'!r},timeout={timeout})\n"
                    "sys.exit(0 if json.loads(r.read()).get('health')=='true' else 1)")
            done = subprocess.run(self.wrap[i] + [sys.executable, "-I", "-S", "-c", code],
                                  capture_output=True, timeout=timeout + 30)
            return done.returncode == 0
        try:
            with urllib.request.urlopen(self.url(i) + "/health", timeout=timeout, context=self._ssl_context()) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, members: Sequence[int] | range, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            for i in list(pending):
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise EtcdClusterError(f"member m{i} exited ({proc.returncode}); see {self.base_dir}/m{i}.log")
                if self.health(i):
                    pending.remove(i)
            if pending:
                if time.monotonic() > deadline:
                    raise EtcdClusterError(f"members {pending} not healthy within {timeout:g} s")
                time.sleep(0.1)          # polling an external process's readiness: no event to wait on

    def status(self, i: int) -> dict:
        req = urllib.request.Request(self.url(i) + "/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=2, context=self._ssl_context()) as resp:
            return json.loads(resp.read())

    def leader(self, timeout: float = 10.0) -> int:
        """Index of the current leader (asked of the live members)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, proc in enumerate(self.procs):
                if proc is None or proc.poll() is not None:
                    continue
                try:
                    st = self.status(i)
                except (OSError, ValueError):
                    continue
                if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return i
            if time.monotonic() > deadline:
                raise EtcdClusterError("no leader")
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        """kill -9 of member i."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self, i: int) -> None:
        self.kill(i)
        self._spawn(i, "existing")
        self.wait_healthy([i])

    def stop(self) -> None:
        for i in range(self.size):
            self.kill(i)
        self.procs = [None] * self.size

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    size = int(args[0]) if args else 3
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    with EtcdCluster(size) as cluster:
        print(cluster.resolve, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
