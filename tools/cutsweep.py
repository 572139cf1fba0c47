"""Cut a proxy's connection at every byte of an exchange, and check the at-most-once rule.

    python3 tools/cutsweep.py                              # the full sweep (every offset, rst and fin)
    python3 tools/cutsweep.py --daemons aio --clients aio --scenarios multi --how rst
    python3 tools/cutsweep.py --boundaries                 # frame ends +-1 only (what the suite runs)
    python3 tools/cutsweep.py --persistent --boundaries    # every connection cut: recovery has no way
    python3 tools/cutsweep.py serve KIND RUNS_FILE [NAME NATPORT]   # a daemon (used by the sweep)

A daemon (threaded meshrpc.Daemon, meshrpc.aio.Daemon or Pyro5's) runs in a process of its own and
appends a line to RUNS_FILE each time one of its methods runs. Between it and the client sits a
tools/cutrelay.py relay that cuts the next connection after exactly k bytes client -> daemon ("up") or
daemon -> client ("down"), by reset or by FIN; k goes over every offset of the exchange (the handshake
included), learnt from a clean run. Each run uses a fresh proxy and tags of its own; a healthy proxy
(not through the relay) calls the daemon after every run. At the end the daemon is stopped and its
record is compared with what every call told its caller (docs/resilience.md):

- a result: the method ran exactly once (an @idempotent one: at least once), and the result is the
  call's own (it carries the call's tag);
- NotDeliveredError (or a subclass): it did not run;
- MaybeDeliveredError (ReplyLostError): it ran at most once;
- anything else, a TimeoutError (nothing here stalls: a cut is seen at once), or a run longer than
  SLOW seconds is a finding; so is a healthy call that fails.

Exit status 1 when anything was found; each finding is printed with the cut that shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cutrelay import Arming, Cut, CutRelay, frame_ends  # noqa: E402

OBJECT_ID = "cut.counter"
STREAM_ITEMS = 3
BIG_EXCHANGE = 20000  # bytes of one direction beyond which the full sweep takes every offset only
BIG_STRIDE = 4093     # to 400 bytes, then frame ends +-1 and every BIG_STRIDE-th
LARGE = 300 * 1024   # bytes of the large call's argument and result (beyond LARGE_FRAME, 256 KiB)
CALL_TIMEOUT = 3.0   # the proxies' _pyroTimeout and REBIND_TIMEOUT: a bound on every run
SLOW = 2.0           # a run longer than this is a finding (a cut is seen at once on loopback)
RUN_BOUND = 15.0
STREAM_LINGER = 0.5  # the daemons' ITER_STREAM_LINGER: a stream whose proxy is gone is closed after it
STREAMS_BOUND = 5.0  # seconds the daemons get to close every stream after the runs     # a run still going after this is a hang: the sweep stops


# ----------------------------------------------------------------------------------------- the daemon
def serve(kind: str, runs_file: str, name: str | None = None, natport: int | None = None) -> None:
    fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(method: str, tag: str) -> None:
        os.write(fd, f"{method} {tag}\n".encode())  # one write per line: whole lines, also from threads

    if kind == "pyro5":
        import Pyro5.api as api
        expose, oneway, behavior = api.expose, api.oneway, api.behavior
        idempotent: Callable[[Any], Any] = lambda method: method  # noqa: E731 (Pyro5 has no such mark)
    else:
        import meshrpc
        expose, oneway, behavior, idempotent = meshrpc.expose, meshrpc.oneway, meshrpc.behavior, meshrpc.idempotent

    @expose
    @behavior(instance_mode="single")
    class Counter:
        def __init__(self) -> None:
            self._value = "none"

        def bump(self, tag: str) -> str:
            record("bump", tag)
            return f"bump {tag}"

        @idempotent
        def peek(self, tag: str) -> str:
            record("peek", tag)
            return f"peek {tag}"

        @oneway
        def note(self, tag: str) -> None:
            record("note", tag)

        def boom(self, tag: str) -> None:
            record("boom", tag)
            raise ValueError(f"boom {tag}")

        def count(self, tag: str, n: int) -> Any:
            record("count", tag)
            return self._items(tag, n)

        def _items(self, tag: str, n: int) -> Any:
            for i in range(n):
                record("item", f"{tag}:{i}")
                yield f"{tag}:{i}"

        def big(self, tag: str, blob: bytes) -> bytes:
            record("big", tag)
            return blob

        def open_streams(self) -> int:
            daemon = self._pyroDaemon
            return len(daemon.streaming_responses if kind == "pyro5" else daemon._streams)

        @property
        def value(self) -> str:
            return self._value

        @value.setter
        def value(self, value: str) -> None:
            record("set", value)
            self._value = value

    if kind == "pyro5":
        import Pyro5.api as api
        daemon = api.Daemon(host="127.0.0.1")
        uri = daemon.register(Counter(), OBJECT_ID)
        # (from another thread: Pyro5's shutdown waits for the loop, which the handler interrupted)
        signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=daemon.shutdown).start())
        print(f"ready {uri}", flush=True)
        daemon.requestLoop()
        daemon.close()
    elif kind == "threaded":
        import meshrpc
        daemon = meshrpc.Daemon(host="127.0.0.1", nathost="127.0.0.1" if natport else None, natport=natport)
        uri = daemon.register(Counter(), OBJECT_ID, name=name)
        print(f"ready {daemon.uriFor(OBJECT_ID, nat=False)}", flush=True)
        daemon.requestLoop()
        daemon.close()
    else:
        import meshrpc.aio

        async def main() -> None:
            daemon = meshrpc.aio.Daemon(host="127.0.0.1", nathost="127.0.0.1" if natport else None, natport=natport)
            daemon.register(Counter(), OBJECT_ID, name=name)
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, daemon.shutdown)
            await daemon.start()
            print(f"ready {daemon.uriFor(OBJECT_ID, nat=False)}", flush=True)
            await daemon.serve_forever()
        asyncio.run(main())
    os.close(fd)


class DaemonProcess:
    def __init__(self, kind: str, runs_file: Path, env: dict[str, str], name: str | None = None,
                 natport: int | None = None) -> None:
        argv = [sys.executable, __file__, "serve", kind, str(runs_file)]
        if name:
            argv += [name, str(natport)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, text=True)
        line = ""
        deadline = time.monotonic() + 20
        assert self.proc.stdout is not None
        while not line.startswith("ready ") and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
        if not line.startswith("ready "):
            self.proc.kill()
            raise RuntimeError(f"the {kind} daemon did not start")
        self.uri = line.split()[1]
        loc = self.uri.split("@", 1)[1]
        host, port = loc.rsplit(":", 1)
        self.address = (host, int(port))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def child_env(realm: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHRPC_", "PYRO_"))}
    # streams of calls whose reply was lost linger briefly, so that the sweep can see that none is kept
    env.update(MESHRPC_ITER_STREAM_LINGER=str(STREAM_LINGER), MESHRPC_REALM=realm, MESHRPC_HOST="127.0.0.1", MESHRPC_INTERFACES="127.0.0.1",
               MESHRPC_NS_PORT="1", MESHRPC_NS_BCPORT="1", PYTHONUNBUFFERED="1")
    return env


def read_runs(path: Path) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            method, tag = line.split(" ", 1)
            counts[(method, tag)] += 1
    return counts


# ------------------------------------------------------------------------------------------- claims
@dataclass
class Claim:
    """What a caller was told about one method run, as the counts it allows."""
    key: tuple[str, str]
    low: int
    high: int | None  # None: no upper bound (an idempotent method may run again)
    told: str


@dataclass
class RunResult:
    claims: list[Claim] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)


def _errors() -> Any:
    from meshrpc import errors
    return errors


def classify(exc: BaseException) -> str:
    errors = _errors()
    if isinstance(exc, errors.NotDeliveredError):
        return "not-run"
    if isinstance(exc, errors.TimeoutError):
        return "timeout"
    if isinstance(exc, errors.MaybeDeliveredError):
        return "maybe"
    return "unclear"


def claim_for(result: RunResult, method: str, tag: str, outcome: str, idempotent: bool = False) -> None:
    """outcome: "ok", "oneway", "not-run", "maybe", "timeout", "unclear", "remote"."""
    key = (method, tag)
    result.outcomes.append(outcome)
    if outcome in ("ok", "remote"):
        result.claims.append(Claim(key, 1, None if idempotent else 1, outcome))
    elif outcome == "not-run":
        result.claims.append(Claim(key, 0, 0, outcome))
    else:  # maybe, timeout, oneway, unclear: at most once, unless idempotent
        result.claims.append(Claim(key, 0, None if idempotent else 1, outcome))


def caught(result: RunResult, what: str, exc: BaseException) -> str:
    outcome = classify(exc)
    if outcome == "unclear":
        result.findings.append(f"{what}: an unclear outcome {type(exc).__module__}.{type(exc).__name__}: {exc}")
    elif outcome == "timeout":
        result.findings.append(f"{what}: timed out (nothing should stall on a cut): {exc}")
    return outcome


def check_value(result: RunResult, what: str, value: Any, expected: Any) -> str:
    if value != expected:
        result.findings.append(f"{what}: a wrong result {value!r}, expected {expected!r}")
    return "ok"


# ------------------------------------------------------------------------------------- scenarios
# Each scenario has a threaded form (t_*, on meshrpc.Proxy) and an asyncio form (a_*, on meshrpc.aio.Proxy);
# both get (value, exception) from their calls (`attempt`, `attempt_async`) and judge them alike.
def attempt(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except Exception as exc:
        return None, exc


async def attempt_async(awaitable: Any) -> tuple[Any, BaseException | None]:
    try:
        return await awaitable, None
    except Exception as exc:
        return None, exc


def judge(r: RunResult, method: str, tag: str, got: tuple, expected: Any, idem: bool = False) -> str:
    value, exc = got
    outcome = caught(r, method, exc) if exc is not None else check_value(r, method, value, expected)
    claim_for(r, method, tag, outcome, idem)
    return outcome


def judge_oneway(r: RunResult, tag: str, got: tuple) -> None:
    value, exc = got
    if exc is None and value is not None:
        r.findings.append(f"note: a oneway call returned {value!r}")
    claim_for(r, "note", tag, caught(r, "note", exc) if exc is not None else "oneway")


def judge_boom(r: RunResult, tag: str, got: tuple) -> None:
    exc = got[1]
    if exc is None:
        r.findings.append("boom returned")
        outcome = "unclear"
    elif isinstance(exc, ValueError):
        outcome = "remote"
        if str(exc) != f"boom {tag}":
            r.findings.append(f"boom: a wrong exception {exc!r}")
    else:
        outcome = caught(r, "boom", exc)
    claim_for(r, "boom", tag, outcome)


def judge_batch(r: RunResult, tag: str, oneway: bool, got: tuple) -> None:
    value, exc = got
    if exc is not None:
        outcome = caught(r, "batch", exc)
    else:
        outcome = "oneway" if oneway else "ok"
    for i, part in enumerate(("a", "b")):
        if outcome == "ok":
            check_value(r, "batch item", value[i], f"bump {tag}{part}")
        claim_for(r, "bump", f"{tag}{part}", outcome)


def judge_large(r: RunResult, tag: str, got: tuple) -> None:
    value, exc = got
    if isinstance(value, dict):  # a Pyro5 daemon's serpent sends bytes as a base64 dict, for Pyro5 clients too
        import serpent
        value = serpent.tobytes(value)
    if exc is None and value != _blob(tag):
        r.findings.append(f"big: a wrong result of {len(value)} bytes")
    claim_for(r, "big", tag, caught(r, "big", exc) if exc is not None else "ok")


def _blob(tag: str) -> bytes:
    return (tag.encode() * (LARGE // len(tag) + 1))[:LARGE]


def stream_claims(r: RunResult, tag: str, started: str, items: list, failed: str | None) -> None:
    claim_for(r, "count", tag, started)
    if started != "ok":
        return
    for i, item in enumerate(items):
        check_value(r, "stream item", item, f"{tag}:{i}")
        claim_for(r, "item", f"{tag}:{i}", "ok")
    if failed is None:
        if len(items) != STREAM_ITEMS:
            r.findings.append(f"stream ended after {len(items)} of {STREAM_ITEMS} items")
        return
    if len(items) < STREAM_ITEMS:  # (else it was the pull that ends the stream that failed)
        claim_for(r, "item", f"{tag}:{len(items)}", failed)
    for i in range(len(items) + 1, STREAM_ITEMS):
        claim_for(r, "item", f"{tag}:{i}", "not-run")


def _batch_of_two(batch: Any, tag: str) -> Any:
    batch.bump(f"{tag}a")
    batch.bump(f"{tag}b")
    return batch


def t_call(p: Any, tag: str, r: RunResult) -> None:
    judge(r, "bump", tag, attempt(lambda: p.bump(tag)), f"bump {tag}")


def t_idem(p: Any, tag: str, r: RunResult) -> None:
    judge(r, "peek", tag, attempt(lambda: p.peek(tag)), f"peek {tag}", idem=True)


def t_oneway(p: Any, tag: str, r: RunResult) -> None:
    judge_oneway(r, tag, attempt(lambda: p.note(tag)))


def t_raises(p: Any, tag: str, r: RunResult) -> None:
    judge_boom(r, tag, attempt(lambda: p.boom(tag)))


def t_batch(p: Any, tag: str, r: RunResult, oneway: bool = False) -> None:
    import meshrpc
    batch = _batch_of_two(meshrpc.BatchProxy(p), tag)
    judge_batch(r, tag, oneway, attempt(lambda: batch(oneway=oneway) if oneway else list(batch())))


def t_batch_oneway(p: Any, tag: str, r: RunResult) -> None:
    t_batch(p, tag, r, True)


def t_attr(p: Any, tag: str, r: RunResult) -> None:
    def set_value() -> None:
        p.value = tag
    if judge(r, "set", tag, attempt(set_value), None) == "ok":
        value, exc = attempt(lambda: p.value)
        if exc is None:
            check_value(r, "get value", value, tag)
        else:
            caught(r, "get value", exc)


def t_stream(p: Any, tag: str, r: RunResult) -> None:
    stream, exc = attempt(lambda: p.count(tag, STREAM_ITEMS))
    if exc is not None:
        stream_claims(r, tag, caught(r, "count", exc), [], None)
        return
    items: list = []
    failed = attempt(lambda: items.extend(stream))[1]
    stream_claims(r, tag, "ok", items, None if failed is None else caught(r, "stream item", failed))


def t_two(p: Any, tag: str, r: RunResult) -> None:
    """Two calls on one connection: a cut between them finds an idle connection closed (or not yet)."""
    t_call(p, f"{tag}a", r)
    t_call(p, f"{tag}b", r)


def t_large(p: Any, tag: str, r: RunResult) -> None:
    """A request and a reply beyond LARGE_FRAME (read into a buffer of their own)."""
    judge_large(r, tag, attempt(lambda: p.big(tag, _blob(tag))))


def t_pyro5_client(p: Any, tag: str, r: RunResult) -> None:
    """A Pyro5 proxy: its outcomes are Pyro5's; only the daemon's side (at most once) is checked."""
    claim_for(r, "bump", tag, "ok" if attempt(lambda: p.bump(tag))[1] is None else "maybe")


THREADED = {"call": t_call, "idem": t_idem, "oneway": t_oneway, "raises": t_raises, "batch": t_batch,
            "batch1w": t_batch_oneway, "attr": t_attr, "stream": t_stream, "two": t_two,
            "large": t_large}


async def a_call(p: Any, tag: str, r: RunResult) -> None:
    judge(r, "bump", tag, await attempt_async(p.bump(tag)), f"bump {tag}")


async def a_idem(p: Any, tag: str, r: RunResult) -> None:
    judge(r, "peek", tag, await attempt_async(p.peek(tag)), f"peek {tag}", idem=True)


async def a_oneway(p: Any, tag: str, r: RunResult) -> None:
    async def note() -> Any:
        await p._pyroBind()  # (the oneway mark comes with the metadata)
        return await p.note(tag)
    judge_oneway(r, tag, await attempt_async(note()))


async def a_raises(p: Any, tag: str, r: RunResult) -> None:
    judge_boom(r, tag, await attempt_async(p.boom(tag)))


async def a_batch(p: Any, tag: str, r: RunResult, oneway: bool = False) -> None:
    import meshrpc.aio
    batch = _batch_of_two(meshrpc.aio.BatchProxy(p), tag)

    async def send() -> Any:
        results = await batch(oneway=oneway)
        return None if oneway else list(results)
    judge_batch(r, tag, oneway, await attempt_async(send()))


async def a_batch_oneway(p: Any, tag: str, r: RunResult) -> None:
    await a_batch(p, tag, r, True)


async def a_attr(p: Any, tag: str, r: RunResult) -> None:
    if judge(r, "set", tag, await attempt_async(p._pyroSetAttr("value", tag)), None) == "ok":
        value, exc = await attempt_async(p._pyroGetAttr("value"))
        if exc is None:
            check_value(r, "get value", value, tag)
        else:
            caught(r, "get value", exc)


async def a_stream(p: Any, tag: str, r: RunResult) -> None:
    stream, exc = await attempt_async(p.count(tag, STREAM_ITEMS))
    if exc is not None:
        stream_claims(r, tag, caught(r, "count", exc), [], None)
        return
    items: list = []

    async def pull() -> None:
        async for item in stream:
            items.append(item)
    failed = (await attempt_async(pull()))[1]
    stream_claims(r, tag, "ok", items, None if failed is None else caught(r, "stream item", failed))


async def a_two(p: Any, tag: str, r: RunResult) -> None:
    await a_call(p, f"{tag}a", r)
    await a_call(p, f"{tag}b", r)


async def a_large(p: Any, tag: str, r: RunResult) -> None:
    judge_large(r, tag, await attempt_async(p.big(tag, _blob(tag))))


async def a_multi(p: Any, tag: str, r: RunResult) -> None:
    """Three calls in flight at once on one connection (pipelined with an aio daemon)."""
    await asyncio.gather(*(a_call(p, f"{tag}{i}", r) for i in range(3)))


AIO = {"call": a_call, "idem": a_idem, "oneway": a_oneway, "raises": a_raises, "batch": a_batch,
       "batch1w": a_batch_oneway, "attr": a_attr, "stream": a_stream, "multi": a_multi,
       "two": a_two, "large": a_large}


# -------------------------------------------------------------------------------------------- the rig
class Rig:
    """Daemon processes of one kind, a relay before each, a healthy proxy, the claims of every run."""

    def __init__(self, kind: str, workdir: Path, named: bool = False) -> None:
        import meshrpc
        from meshrpc.config import Settings
        self.kind = kind
        self.realm = "cut-" + uuid.uuid4().hex[:10]
        self.runs_file = workdir / f"runs-{kind}-{self.realm}.txt"
        self.arming = Arming()
        self.named = named
        self.name = f"cut.counter.{self.realm}" if named else None
        self.settings = Settings().copy(REALM=self.realm, INTERFACES="127.0.0.1", HOST="127.0.0.1",
                                        REBIND_TIMEOUT=CALL_TIMEOUT, COMMTIMEOUT=CALL_TIMEOUT,
                                        NS_PORT=1, NS_BCPORT=1)
        env = child_env(self.realm)
        self.daemons: list[DaemonProcess] = []
        self.relays: list[CutRelay] = []
        for _ in range(2 if named else 1):
            relay = CutRelay(arming=self.arming)
            daemon = DaemonProcess(kind, self.runs_file, env, self.name, relay.port if named else None)
            relay.target = daemon.address
            self.relays.append(relay)
            self.daemons.append(daemon)
        self.relay = self.relays[0]
        self.healthy = meshrpc.Proxy(self.daemons[0].uri, settings=self.settings)
        self.claims: list[tuple[str, Claim]] = []  # (the run's label, its claim)
        self.findings: list[str] = []
        self.outcomes: collections.Counter = collections.Counter()
        self.runs = 0
        self.seq = 0

    @property
    def target(self) -> str:
        if self.named:
            return f"PYRONAME:{self.name}"
        return f"PYRO:{OBJECT_ID}@127.0.0.1:{self.relay.port}"

    def tag(self, scenario: str) -> str:
        self.seq += 1
        return f"{scenario}-{self.seq:07d}"

    def healthy_check(self, label: str) -> None:
        tag = self.tag("healthy")
        try:
            value = self.healthy.peek(tag)
        except Exception as exc:
            self.findings.append(f"{label}: the healthy client failed: {type(exc).__name__}: {exc}")
            return
        if value != f"peek {tag}":
            self.findings.append(f"{label}: the healthy client got {value!r}")

    def take(self, label: str, result: RunResult, elapsed: float, slow: float = SLOW) -> None:
        self.runs += 1
        if elapsed > slow:
            result.findings.append(f"took {elapsed:.2f} s")
        self.findings.extend(f"{label}: {finding}" for finding in result.findings)
        self.claims.extend((label, claim) for claim in result.claims)
        self.outcomes.update(result.outcomes)

    def verdict(self) -> list[str]:
        """Stop the daemons and compare their record with every claim."""
        found = list(self.findings)
        if self.kind != "pyro5":  # every stream is closed soon: none is kept for a client that left
            for daemon in self.daemons:
                try:
                    with self.healthy.__class__(daemon.uri, settings=self.settings) as proxy:
                        deadline = time.monotonic() + STREAMS_BOUND
                        while proxy.open_streams() and time.monotonic() < deadline:
                            time.sleep(0.05)
                        if proxy.open_streams():
                            found.append(f"{self.kind} daemon: {proxy.open_streams()} streams still open "
                                         f"{STREAMS_BOUND:g} s after the runs (ITER_STREAM_LINGER {STREAM_LINGER:g} s)")
                except Exception as exc:
                    found.append(f"{self.kind} daemon: asking for its open streams failed: {exc!r}")
        try:
            self.healthy._pyroRelease()
        except Exception:
            pass
        for relay in self.relays:
            relay.close()
        for daemon in self.daemons:
            daemon.stop()
        counts = read_runs(self.runs_file)
        for label, claim in self.claims:
            ran = counts.get(claim.key, 0)
            if ran < claim.low or (claim.high is not None and ran > claim.high):
                found.append(f"{label}: {claim.key[0]} {claim.key[1]} ran {ran} times; the caller was told "
                             f"'{claim.told}'")
        return found


def proxy_maker(client: str, rig: Rig) -> Any:
    import meshrpc
    import meshrpc.aio
    if client == "proxy":
        return lambda: meshrpc.Proxy(rig.target, settings=rig.settings)
    if client == "aio":
        return lambda: meshrpc.aio.Proxy(rig.target, settings=rig.settings)
    import Pyro5.api

    def pyro5_proxy() -> Any:
        proxy = Pyro5.api.Proxy(rig.target)
        proxy._pyroTimeout = CALL_TIMEOUT
        return proxy
    return pyro5_proxy


class Runner:
    """Runs one scenario of one client kind against a rig, under a cut (or clean)."""

    def __init__(self, rig: Rig, client: str, scenario: str) -> None:
        self.rig = rig
        self.client = client
        self.scenario = scenario
        self.make = proxy_maker(client, rig)
        self.loop = asyncio.new_event_loop() if client == "aio" else None
        if client == "aio":
            self.step: Any = AIO[scenario]
        elif client == "pyro5":
            self.step = t_pyro5_client
        else:
            self.step = THREADED[scenario]

    total_up: int | None = None  # bytes the client sends in a clean run (exchange)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()

    def run(self, cut: Cut | None, persistent: bool = False) -> RunResult:
        """One run under `cut` (None: clean); `persistent`: every connection of the run is cut there."""
        rig = self.rig
        rig.arming.arm(cut, persistent)
        tag = rig.tag(self.scenario)
        result = RunResult()
        started = time.monotonic()
        if self.loop is not None:
            self.loop.run_until_complete(asyncio.wait_for(self._aio(tag, result), RUN_BOUND))
        else:
            worker = threading.Thread(target=self._threaded, args=(tag, result), daemon=True)
            worker.start()
            worker.join(RUN_BOUND)
            if worker.is_alive():
                raise RuntimeError(f"{self.label(cut)}: the run hangs")
        elapsed = time.monotonic() - started
        rig.arming.arm(None)
        if cut is not None and cut.direction == "up" and self.total_up is not None and cut.after >= self.total_up:
            # everything the client sends in this exchange reached the daemon whole: nothing may be lost
            for claim in result.claims:
                if claim.told in ("maybe", "oneway"):
                    claim.low, claim.told = 1, f"{claim.told}, and the daemon received it whole"
        for relay in rig.relays:
            relay.wait_idle()
        label = self.label(cut) + (" on every connection" if persistent else "")
        rig.take(label, result, elapsed, SLOW + (2 * CALL_TIMEOUT if persistent else 0))
        rig.healthy_check(label)
        return result

    def label(self, cut: Cut | None) -> str:
        where = f"{cut.how} after {cut.after} {cut.direction}" if cut else "clean"
        return f"{self.rig.kind} daemon, {self.client} client, {self.scenario}, {where}"

    def _threaded(self, tag: str, result: RunResult) -> None:
        proxy = self.make()
        try:
            self.step(proxy, tag, result)
        finally:
            proxy._pyroRelease()

    async def _aio(self, tag: str, result: RunResult) -> None:
        proxy = self.make()
        try:
            await self.step(proxy, tag, result)
        finally:
            await proxy._pyroRelease()

    def exchange(self) -> dict[str, bytes]:
        """The bytes of a clean run, each way."""
        self.run(None)
        data = dict(self.rig.arming.last_bytes)
        self.total_up = len(data["up"])
        return data


def offsets(data: bytes, full: bool, limit: int, stride: int, rng: random.Random | None = None,
            sample: int = 0) -> list[int]:
    """The cut offsets of one direction: every one (to `limit`, then frame ends +-1 and every `stride`);
    without `full`, frame ends +-1, 0 and `sample` seeded random ones."""
    total = len(data)
    ends = frame_ends(data)
    around = {k for end in ends for k in (end - 1, end, end + 1) if 0 <= k <= total} | {0, total}
    if full and total > BIG_EXCHANGE:  # a large call: its start, its frame ends, and a stride through it
        limit, stride = min(limit, 400), max(stride, BIG_STRIDE)
    if full:
        picked = set(range(0, min(total, limit) + 1)) | around | set(range(0, total + 1, max(1, stride)))
    else:
        picked = set(around)
        if rng is not None and sample:
            picked |= {rng.randint(0, total) for _ in range(sample)}
    return sorted(picked)


def sweep(rig: Rig, client: str, scenario: str, hows: list[str], full: bool, limit: int = 400,
          stride: int = 1, rng: random.Random | None = None, sample: int = 0,
          persistent: bool = False) -> dict[str, int]:
    runner = Runner(rig, client, scenario)
    try:
        data = runner.exchange()
        sizes = {way: len(data[way]) for way in ("up", "down")}
        for how in hows:
            for way in ("up", "down"):
                for k in offsets(data[way], full, limit, stride, rng, sample):
                    runner.run(Cut(way, k, how), persistent)
    finally:
        runner.close()
    return sizes


# -------------------------------------------------------------------------------------------- main
DAEMONS = ("threaded", "aio", "pyro5")
CLIENTS = ("proxy", "aio", "pyro5")


def combos(daemons: list[str], clients: list[str], scenarios: list[str] | None) -> list[tuple[str, str, str, bool]]:
    """(daemon, client, scenario, named) to run."""
    out = []
    for daemon in daemons:
        for client in clients:
            if client == "pyro5":
                if daemon != "pyro5":  # a Pyro5 client is checked against meshrpc daemons only
                    out.append((daemon, client, "call", False))
                continue
            table = AIO if client == "aio" else THREADED
            for scenario in table:
                if scenarios is None or scenario in scenarios:
                    out.append((daemon, client, scenario, False))
            if daemon != "pyro5" and (scenarios is None or "name" in scenarios):
                for scenario in ("call", "idem", "stream", "multi" if client == "aio" else "two"):
                    out.append((daemon, client, scenario, True))
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        args = sys.argv[2:]
        serve(args[0], args[1], args[2] if len(args) > 2 else None, int(args[3]) if len(args) > 3 else None)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", default=",".join(DAEMONS))
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--scenarios", default=None, help="comma-separated (name: by PYRONAME, two replicas)")
    parser.add_argument("--how", default="rst,fin")
    parser.add_argument("--boundaries", action="store_true", help="frame ends +-1 only")
    parser.add_argument("--limit", type=int, default=100000, help="every offset up to this, then --stride")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--persistent", action="store_true",
                        help="cut every connection of a run at the offset (recovery finds no way through)")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",") if args.scenarios else None
    wanted = combos(args.daemons.split(","), args.clients.split(","), scenarios)
    found_any = False
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        rigs: dict[tuple[str, bool], Rig] = {}
        sizes: dict[tuple, dict[str, int]] = {}
        try:
            for daemon, client, scenario, named in wanted:
                rig = rigs.get((daemon, named))
                if rig is None:
                    rig = rigs[(daemon, named)] = Rig(daemon, Path(tmp), named)
                before = rig.runs
                t0 = time.monotonic()
                sizes[(daemon, client, scenario, named)] = sweep(
                    rig, client, scenario, args.how.split(","), not args.boundaries, args.limit, args.stride,
                    persistent=args.persistent)
                print(f"{daemon:8} {client:6} {scenario + (' by name' if named else ''):14} "
                      f"{rig.runs - before:6} runs {time.monotonic() - t0:7.1f} s  bytes "
                      f"{sizes[(daemon, client, scenario, named)]}", flush=True)
        finally:
            for (daemon, named), rig in rigs.items():
                found = rig.verdict()
                print(f"== {daemon} daemon{' (two replicas, by name)' if named else ''}: {rig.runs} runs, "
                      f"outcomes {dict(rig.outcomes)}, {len(found)} findings")
                for line in found[:60]:
                    print("   ", line)
                if len(found) > 60:
                    print(f"    ... {len(found) - 60} more")
                found_any = found_any or bool(found)
    print(f"total {time.monotonic() - started:.1f} s")
    return 1 if found_any else 0


if __name__ == "__main__":
    sys.exit(main())
