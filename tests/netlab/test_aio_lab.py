"""meshrpc.aio (docs/asyncio.md) between hosts of the namespace lab (tools/netlab.py, needs root).

Every daemon and client is a process of its own inside a lab host (tools/aio_lab.py: the service
and the client, started with PYTHONPATH set to this tree); the root namespace gets nothing, and
mDNS stays inside the lab. The service prints a line for every run of a non-idempotent method, so
the lines of all its replicas say how often each call ran, and every call's outcome as the client
saw it is checked against them (tools/aio_lab.py: at_most_once_violations): a success ran exactly
once, a NotDeliveredError never, a MaybeDeliveredError at most once; any other exception is none of
the outcomes of docs/resilience.md.

1. An aio daemon on h1, a threaded one on h3, clients on h2 whose link loses 15 % of its frames
   both ways, 5-30 ms late: found by PYRONAME and PYROMETA, sequential calls and hundreds at once,
   for the three pairings with an aio side at once (aio proxy and daemon; threaded proxy, aio
   daemon; aio proxy, threaded daemon).
2. An aio proxy's stream of calls while h1's link is cut and comes back (as test_resilience_lab's
   partition, with `_pyroTimeout` 1 s and without); and while the replica it uses is killed with
   SIGKILL mid-call, calls in flight (as its failover and in-flight tests; with threaded replicas,
   calls waiting for their turn). A twin proxy with `_pyroMaxRetries = 1` (Pyro5's
   re-send-anything opt-in) shows that the count sees a call that ran twice. And a graceful
   shutdown of the aio replica in use, calls in progress (as its graceful move): none of them may
   fail (until 323737f a call answered "not run" made the aio proxy close its pipelined connection,
   and the calls in progress on it, which the daemon finished and answered, failed).

Nothing waits by sleeping: tests wait for lines the processes print, with deadlines (the length of
the partition is the scenario). Run with `-s` to see the figures.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from test_netlab import lab_or_skip, load_tool

aio_lab = load_tool("aio_lab.py")
netlab = aio_lab.netlab
STEP = aio_lab.STEP

pytestmark = pytest.mark.netlab

LOSS, DELAY = 15.0, (5.0, 30.0)  # h2's link, both ways


def _root_links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout


@pytest.fixture(autouse=True)
def _root_namespace_untouched():
    before = _root_links()
    yield
    assert _root_links() == before


def _errors(result: dict) -> list:
    return [e for e in result.get("events", []) if e["kind"] == "error"][:5]


# -------------------------------------------------------------------------------------------------
# 1 and 3. a lossy link: every call answered right, each run once, whatever drives either side

# label: (proxy driver, daemon kind, sequential calls, calls at once) per locator, all three at once
# against an aio daemon on h1 and a threaded one on h3 (each with its own name and tag). At this
# loss a call that waits for the one before it costs about 0.1-0.3 s (a lost segment waits for
# TCP's retransmission): calls pipelined on one connection (aio proxy, aio daemon) come by the
# hundred, those that take turns (a threaded daemon declines pipelining; a threaded proxy's calls
# hold its lock) by the dozen.
PAIRINGS = {"aa": ("aio", "aio", 10, 300), "ta": ("threaded", "aio", 8, 16), "at": ("aio", "threaded", 8, 16)}


@pytest.mark.timeout(90)
def test_lossy_link_calls_by_name_and_tag_each_run_once_for_each_pairing(tmp_path):
    with lab_or_skip(3) as lab:
        h1, h2, h3 = lab.hosts
        h2.set_loss(LOSS, delay_ms=DELAY)
        # the first lookup crosses the lossy link too: give it time rather than fail the call
        with aio_lab.run(lab, tmp_path, {"MESHRPC_LOOKUP_TIMEOUT": "15"}) as run:
            servers = {kind: aio_lab.server(run, host, kind, kind, f"aiolab.{kind}", f"aiolab-{kind}")[0]
                       for kind, host in (("aio", h1), ("threaded", h3))}
            clients = {label: aio_lab.client(run, h2, "burst", "--driver", driver, "--seq", str(seq),
                                             "--pipe", str(burst), label=label,
                                             uris=f"PYRONAME:aiolab.{kind},PYROMETA:aiolab-{kind}")
                       for label, (driver, kind, seq, burst) in PAIRINGS.items()}
            results = {label: client.wait_json("RESULT ", 60)[1] for label, client in clients.items()}
            for client in clients.values():
                client.wait_exit(STEP)
            for child in servers.values():
                aio_lab.stop_server(child)
            ran = aio_lab.runs(*servers.values())
        lost = h2.impairment_stats()
    print(f"\n[aio-lab] {LOSS:g} % loss: frames lost {lost['egress']['dropped']} of {lost['egress']['frames']} out, "
          f"{lost['ingress']['dropped']} of {lost['ingress']['frames']} in")
    assert lost["egress"]["dropped"] > 0 and lost["ingress"]["dropped"] > 0  # the loss was there
    for label, (driver, kind, seq, burst) in PAIRINGS.items():
        phases = results[label]["phases"]
        pairing = f"{driver} proxy -> {kind} daemon"
        print(f"[aio-lab] {pairing}: " + "; ".join(
            f"{p['uri'].split(':')[0]} {p['phase']} {p['calls']} in {p['seconds']:.2f} s" for p in phases))
        assert [(p["uri"].split(":")[0], p["phase"]) for p in phases] == [
            (locator, phase) for locator in ("PYRONAME", "PYROMETA") for phase in ("find", "seq", "at-once")], pairing
        for p in phases:
            assert (p["ok"], p["wrong"], p["errors"], p["tags"]) == (p["calls"], 0, {}, [kind]), (pairing, p)
            assert p["seconds"] < 30, (pairing, p)  # bounded: TCP repairs the losses within a few RTOs per call
        outcomes = {k: v for p in phases if p["phase"] != "find" for k, v in p["outcomes"].items()}
        assert len(outcomes) == 2 * (seq + burst), pairing
        mine = {call_id: n for call_id, n in ran.items() if call_id.startswith(label)}
        assert aio_lab.at_most_once_violations(outcomes, mine) == [], pairing
    assert sum(ran.values()) == sum(2 * (seq + burst) for _, _, seq, burst in PAIRINGS.values())


# -------------------------------------------------------------------------------------------------
# 2a. partition: h1's link down for a while, then up. Two ways to call, as test_resilience_lab's:
# - pyroTimeout-1s: idempotent calls time out and are re-sent (REBIND_TIMEOUT 60 s) until they go
#   through after the heal; non-idempotent ones in flight raise TimeoutError (maybe delivered). The
#   8 s cut puts the heal between TCP's retransmissions at 6.2 and 12.6 s after the first loss
#   (backoff 0.2, 0.6, 1.4, 3.0, 6.2, 12.6 s ...): calls kept on the silent connection would go on
#   5 s after the heal (they did before 402df9b; the threaded proxy, which connects anew after a
#   timeout, 0.4 s);
# - no-timeout: the connection outlives the cut, every call completes at TCP's next retransmission
#   (1.2-1.5 s after a 5 s cut), none fails.
# Either way no call runs twice, nothing gets through while the link is down, and the calls go on
# soon after the heal.

RECOVERY_BOUND = 3.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("timeout,cut", [(1.0, 8.0), (0.0, 5.0)], ids=["pyroTimeout-1s-cut-8s", "no-timeout-cut-5s"])
def test_partition_heals_aio_idempotent_calls_recover_non_idempotent_run_at_most_once(tmp_path, timeout, cut):
    with lab_or_skip(2) as lab:
        h1, h2 = lab.hosts
        with aio_lab.run(lab, tmp_path, {"MESHRPC_REBIND_TIMEOUT": "60"}) as run:
            server, _ = aio_lab.server(run, h1, "A")
            client = aio_lab.client(run, h2, "stream", "--tasks", "3", "--timeout", str(timeout),
                                    "--gap", "0.5")
            client.wait_line("BOUND ", STEP)
            client.wait_line("PROGRESS ", STEP)
            mark = client.count()
            down_at, up_at = aio_lab.partition(h1, cut)
            _, back = client.wait_json("EVENT ", cut + STEP, mark,
                                       lambda e: e["kind"] == "gap" and e["t"] > down_at)
            client.wait_line("PROGRESS ", STEP, client.count())  # and it goes on
            result = aio_lab.finish_stream(client)
            aio_lab.stop_server(server)
            ran = aio_lab.runs(server)
    by = result["by_method"]
    recovered = back["t"] - up_at
    print(f"\n[aio-lab] partition {cut:g} s, timeout {timeout:g} s: first success {recovered * 1000:.0f} ms "
          f"after link up; {result['calls']} calls, failed {by['bump']['failed']} bump {by['bump']['errors']}, "
          f"{by['whoami']['failed']} whoami")
    assert aio_lab.at_most_once_violations(result["outcomes"], ran) == []
    assert back["since"] <= down_at + 0.5  # nothing got through the partition
    assert by["whoami"]["failed"] == 0, _errors(result)
    assert by["whoami"]["ok"] > 0 and by["bump"]["ok"] > 0
    # the calls in flight across the cut: not re-sent, the caller told that they may have run
    assert set(by["bump"]["errors"]) == ({"TimeoutError"} if timeout else set()), _errors(result)
    assert result["wrong"] == 0 and result["stuck"] == 0
    assert result["tags"] == ["A"]
    assert 0 <= recovered <= RECOVERY_BOUND


# -------------------------------------------------------------------------------------------------
# 2b. the replica in use killed with SIGKILL mid-call; the other one serves the same name

IN_FLIGHT = 20  # of each kind


@pytest.mark.timeout(90)
def test_kill_mid_call_aio_failover_to_replica_runs_nothing_twice(tmp_path):
    with lab_or_skip(3) as lab:
        with aio_lab.run(lab, tmp_path) as run:
            servers, client, bound, used, other = aio_lab.two_replicas(run, lab, "--retry-proxy")
            assert bound["retry"] == bound["main"], bound
            # long calls in flight on the replica in use, pipelined on the main proxy's connection:
            # non-idempotent ones (W*) and idempotent ones (H*); and a non-idempotent one of the twin
            # that may re-send anything (R)
            client.send(f"call main work W 60 {IN_FLIGHT}")
            client.send(f"call main hold H 3 {IN_FLIGHT}")
            client.send("call retry work R 60")
            in_flight = [f"{kind}{i}" for kind in "WH" for i in range(IN_FLIGHT)] + ["R"]
            for call_id in in_flight:
                servers[used].wait_line(f"RUNNING {call_id} ", STEP)
            mark = client.count()
            killed_at = time.monotonic()
            servers[used].kill()
            calls = {}
            for call_id in in_flight[:-1]:
                calls[call_id] = client.wait_json("CALL ", STEP, mark, lambda c, i=call_id: c["id"] == i)[1]
            servers[other].wait_line("RAN R ", STEP)  # the twin re-sent it: it runs a second time
            switched, result, ran = aio_lab.finish_on(other, servers, client, mark)
    by = result["by_method"]
    print(f"\n[aio-lab] kill -9 mid-call: first success on the replica {(switched['t'] - killed_at) * 1000:.0f} ms "
          f"after the kill; {result['calls']} calls, failed {by['bump']['failed']} bump {by['bump']['errors']}, "
          f"{by['whoami']['failed']} whoami")
    for i in range(IN_FLIGHT):
        work, hold = calls[f"W{i}"], calls[f"H{i}"]
        assert work["ok"] is False and work["error"] == "ReplyLostError", work  # maybe delivered: not re-sent
        assert ran[f"W{i}"] == 1
        assert hold["ok"] is True and hold["result"] == [other, f"H{i}"], hold  # idempotent: re-sent
    assert ran["R"] == 2  # the count sees a double run: what _pyroMaxRetries allows and nothing else does
    assert switched["t"] - killed_at <= 2.0
    assert by["whoami"]["failed"] == 0, _errors(result)  # idempotent: rebound to the replica by itself
    assert set(by["bump"]["errors"]) <= {"ReplyLostError"}, _errors(result)
    assert result["wrong"] == 0 and result["stuck"] == 0
    assert result["tags"] == [used, other]
    outcomes = dict(result["outcomes"])
    assert outcomes.pop("R") in ("ok", "cancelled")
    ran.pop("R")
    assert aio_lab.at_most_once_violations(outcomes, ran) == []


# 2b'. the same with threaded replicas: they decline pipelining, so the aio proxy's calls take turns
# on its connection. The one in flight when the replica dies may have run (ReplyLostError); those
# waiting for their turn were never sent and run once on the other replica, idempotent or not.

WAITING = 5  # of each kind


@pytest.mark.timeout(90)
def test_kill_threaded_replica_mid_call_aio_proxy_sends_waiting_calls_elsewhere(tmp_path):
    with lab_or_skip(3) as lab:
        with aio_lab.run(lab, tmp_path) as run:
            servers, client, _, used, other = aio_lab.two_replicas(run, lab, kind="threaded")
            client.send("call main work W 60")
            servers[used].wait_line("RUNNING W ", STEP)
            client.send(f"call main work Q 0.05 {WAITING}")
            client.send(f"call main hold K 0.05 {WAITING}")
            waiting = [f"{kind}{i}" for kind in "QK" for i in range(WAITING)]
            client.wait_line("STARTED K", STEP)
            mark = client.count()
            servers[used].kill()
            calls = {call_id: client.wait_json("CALL ", STEP, mark, lambda c, i=call_id: c["id"] == i)[1]
                     for call_id in ["W", *waiting]}
            _, result, ran = aio_lab.finish_on(other, servers, client, mark)
    print(f"\n[aio-lab] kill -9 of a threaded replica: {result['calls']} calls, failed {result['failed']}; "
          f"{sum(c['ok'] for c in calls.values())} of {len(waiting)} waiting calls answered elsewhere")
    assert calls["W"]["ok"] is False and calls["W"]["error"] == "ReplyLostError", calls["W"]
    assert ran["W"] == 1
    for call_id in waiting:
        assert calls[call_id]["ok"] is True and calls[call_id]["result"] == [other, call_id], calls[call_id]
    assert result["failed"] == 0, _errors(result)
    assert result["wrong"] == 0 and result["stuck"] == 0
    assert result["tags"] == [used, other]
    assert aio_lab.at_most_once_violations(result["outcomes"], ran) == []


# -------------------------------------------------------------------------------------------------
# 2c. graceful shutdown (SIGTERM -> daemon.shutdown()) of the aio replica in use, calls in progress:
# they finish and reply, requests that come meanwhile are answered "not run" and go to the other
# replica, idempotent or not (docs/resilience.md, "Graceful shutdown": no call is lost)

class LostInShutdown(AssertionError):
    """A call failed that a graceful shutdown must not fail (and nothing ran twice)."""


IN_PROGRESS = 10  # of each kind, 2 s each (the daemon waits up to SHUTDOWN_GRACE, 5 s, for them)


@pytest.mark.timeout(90)
def test_graceful_shutdown_of_aio_replica_loses_no_call_idempotent_or_not(tmp_path):
    with lab_or_skip(3) as lab:
        with aio_lab.run(lab, tmp_path) as run:
            servers, client, _, used, other = aio_lab.two_replicas(run, lab)
            client.send(f"call main work W 2 {IN_PROGRESS}")
            client.send(f"call main hold H 2 {IN_PROGRESS}")
            in_progress = [f"{kind}{i}" for kind in "WH" for i in range(IN_PROGRESS)]
            for call_id in in_progress:
                servers[used].wait_line(f"RUNNING {call_id} ", STEP)
            mark = client.count()
            servers[used].terminate()
            servers[used].wait_json("CLOSED ", STEP)
            aio_lab.ended(servers[used])
            calls = {call_id: client.wait_json("CALL ", STEP, mark, lambda c, i=call_id: c["id"] == i)[1]
                     for call_id in in_progress}
            _, result, ran = aio_lab.finish_on(other, servers, client, mark)
    by = result["by_method"]
    print(f"\n[aio-lab] graceful shutdown: {result['calls']} calls, failed {by['bump']['failed']} bump "
          f"{by['bump']['errors']}, {by['whoami']['failed']} whoami; in progress: "
          f"{sum(c['ok'] for c in calls.values())} of {len(calls)} answered")
    assert aio_lab.at_most_once_violations(result["outcomes"], ran) == []
    assert result["wrong"] == 0 and result["stuck"] == 0
    assert result["tags"] == [used, other]
    lost = [c for c in calls.values() if not c["ok"]] + _errors(result)
    if lost:
        raise LostInShutdown(f"{len(lost)} calls failed: {lost[:3]}")
    for call_id, call in calls.items():
        assert call["result"] == [used, call_id], call  # finished where they ran
