"""`meshrpc demo`: a self-contained tour on loopback.

It starts daemons in subprocesses (two replicas of a greeting service, two tagged sensors), shows what
the mesh sees, calls by PYRONAME and PYROMETA, kills a replica and shows a proxy carrying on, and
stops every process it started. Run as `python -m meshrpc.cli.demo serve ROLE LABEL`, this module is
one of those daemons.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from ..limits import CLI_DEMO_READY_TIMEOUT
from .output import Output

CARRY_ON_CALLS = 5

SENSORS = {"kitchen": 21.5, "garden": 12.0}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a self-contained tour on loopback (daemons, mesh lookups, failover)",
                       description="Start a few daemons on loopback in a realm of their own (two replicas of a "
                                   "greeting service, two tagged sensors), show what the mesh sees, call them by "
                                   "name and by tags, kill a replica and show a proxy carrying on; then stop "
                                   "everything it started. Nothing leaves this machine.")
    p.add_argument("--json", action="store_true", help="print the steps' results as one JSON object")
    p.set_defaults(run=run)


# ---------------------------------------------------------------- the demo's daemons (subprocesses)
def serve(role: str, label: str) -> None:
    import meshrpc

    @meshrpc.expose
    class Greeting:
        @meshrpc.idempotent
        def hello(self, name: str) -> str:
            return f"hello {name}, from replica {label} (pid {os.getpid()})"

    @meshrpc.expose
    class Sensor:
        @meshrpc.idempotent
        def read(self) -> dict[str, Any]:
            return {"place": label, "celsius": SENSORS[label] + random.uniform(-0.2, 0.2)}

    with meshrpc.Daemon(host="127.0.0.1") as daemon:
        if role == "greeting":
            uri = daemon.register(Greeting(), name="demo.greeting", metadata={"greeting", f"replica-{label}"})
        else:
            uri = daemon.register(Sensor(), name=f"demo.sensor.{label}", metadata={"sensor", label, "temperature"})
        signal.signal(signal.SIGTERM, lambda *_: daemon.shutdown())  # stop cleanly: goodbyes on the mesh
        print(f"ready {uri}", flush=True)
        daemon.requestLoop()


# ---------------------------------------------------------------- the tour
class Tour:
    def __init__(self, out: Output) -> None:
        self.out = out
        self.realm = "demo-" + uuid.uuid4().hex[:8]
        self.processes: dict[str, subprocess.Popen] = {}
        self.results: dict[str, Any] = {"realm": self.realm}
        self.step_no = 0

    def step(self, text: str) -> None:
        self.step_no += 1
        if not self.out.json_mode:
            self.out.line(f"\n[{self.step_no}/6] {text}", "bold")

    def say(self, text: str, *styles: str) -> None:
        if not self.out.json_mode:
            self.out.line("      " + text, *styles)

    def start(self, role: str, label: str) -> None:
        env = dict(os.environ, MESHRPC_REALM=self.realm, MESHRPC_HOST="127.0.0.1", PYTHONUNBUFFERED="1")
        env.pop("MESHRPC_INTERFACES", None)
        self.processes[f"{role}-{label}"] = subprocess.Popen(
            [sys.executable, "-m", "meshrpc.cli.demo", "serve", role, label],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

    def wait_ready(self) -> dict[str, str]:
        uris = {}
        for key, process in self.processes.items():
            line = process.stdout.readline() if process.stdout else ""
            if not line.startswith("ready "):
                raise RuntimeError(f"demo daemon {key} did not start (exit code {process.poll()})")
            uris[key] = line.split()[1]
        return uris

    def stop_all(self) -> int:
        stopped = 0
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                stopped += 1
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return stopped

    def run(self) -> int:
        import meshrpc
        from ..mesh import get_registry
        from .browse import print_table

        started = time.monotonic()
        settings = meshrpc.config.copy(REALM=self.realm, HOST="127.0.0.1")
        out = self.out
        if not out.json_mode:
            out.line(f"meshrpc demo: a tour on loopback (mesh realm {self.realm}); nothing leaves this machine")

        self.step("starting 4 daemons: 2 replicas of demo.greeting, 2 tagged sensors")
        for role, label in (("greeting", "A"), ("greeting", "B"), ("sensor", "kitchen"), ("sensor", "garden")):
            self.start(role, label)
        uris = self.wait_ready()
        registry = get_registry(settings)
        news = threading.Event()
        unsubscribe = registry.subscribe(lambda event, entry: news.set())
        try:
            deadline = time.monotonic() + CLI_DEMO_READY_TIMEOUT
            while len(registry.list(prefix="demo.")) < 4:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError("the demo daemons did not appear on the mesh in time")
                news.wait(min(remaining, 0.5))
                news.clear()
        finally:
            unsubscribe()
        self.say(f"all 4 seen on the mesh after {time.monotonic() - started:.2f} s", "green")

        self.step("what `meshrpc browse` sees")
        entries = sorted(registry.list(prefix="demo."), key=lambda e: (e.name, e.uri))
        self.results["browse"] = [{"name": e.name, "uri": e.uri, "metadata": sorted(e.metadata)} for e in entries]
        if not out.json_mode:
            print_table(out, entries)

        self.step("calling by name: Proxy('PYRONAME:demo.greeting').hello('you')")
        greeting = meshrpc.Proxy("PYRONAME:demo.greeting", settings=settings)
        answer = greeting.hello("you")
        self.say(repr(answer))
        self.say(f"connected to {greeting._pyroUri}", "dim")
        self.results["pyroname"] = answer

        self.step("calling by tags: Proxy('PYROMETA:sensor,kitchen').read()")
        with meshrpc.Proxy("PYROMETA:sensor,kitchen", settings=settings) as sensor:
            reading = sensor.read()
        self.say(f"{reading['place']}: {reading['celsius']:.1f} °C")
        self.results["pyrometa"] = reading

        self.step("kill -9 the replica that answered; the same proxy carries on")
        victim = next(key for key, uri in uris.items() if uri == str(greeting._pyroUri))
        self.processes[victim].send_signal(signal.SIGKILL)
        self.processes[victim].wait(5)
        self.say(f"killed {victim} (pid {self.processes[victim].pid})", "yellow")
        failures, answers, errors = 0, [], []
        failover_started = time.monotonic()
        for i in range(CARRY_ON_CALLS):
            try:
                answers.append(greeting.hello(f"call {i + 1}"))
            except meshrpc.errors.MeshError as exc:
                failures += 1
                errors.append(f"call {i + 1}: {type(exc).__name__}: {exc}")
                self.say(f"call {i + 1} failed: {exc}", "red")
        failover = time.monotonic() - failover_started
        survivor = answers[-1] if answers else "-"
        self.say(f"{len(answers)} calls answered, {failures} failed; now served by: {survivor!r}",
                 "green" if not failures else "red")
        self.say(f"{CARRY_ON_CALLS} calls including the failover took {failover * 1000:.0f} ms", "dim")
        greeting._pyroRelease()
        self.results["failover"] = {"answered": len(answers), "failed": failures, "errors": errors,
                                    "seconds": round(failover, 3)}

        self.step("cleaning up")
        stopped = self.stop_all()
        self.say(f"stopped {stopped} daemon processes (and the killed one is gone too)")
        elapsed = time.monotonic() - started
        self.results["seconds"] = round(elapsed, 2)
        victim_label = victim.split("-", 1)[1]
        ok = failures == 0 and len(answers) == CARRY_ON_CALLS and f"replica {victim_label} " not in survivor
        self.results["ok"] = ok
        if out.json_mode:
            out.json(self.results)
        else:
            out.line(f"\n{'every step worked' if ok else 'some steps FAILED'} in {elapsed:.1f} s",
                     "green" if ok else "red")
        return 0 if ok else 1


def run(args: argparse.Namespace, out: Output) -> int:
    tour = Tour(out)
    try:
        return tour.run()
    finally:
        tour.stop_all()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        try:
            serve(sys.argv[2], sys.argv[3])
        except KeyboardInterrupt:
            pass
    else:
        sys.exit("usage: python -m meshrpc.cli.demo serve greeting|sensor LABEL")
