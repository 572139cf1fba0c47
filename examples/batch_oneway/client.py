"""Batched calls (many calls, one round trip) and oneway calls (no waiting) against
`example.counter` (start server.py first).

    python3 examples/batch_oneway/client.py [CALLS]
"""

import sys
import time

import meshrpc


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with meshrpc.Proxy("PYRONAME:example.counter") as counter:
        counter._pyroBind()  # connect now, so the timings below are calls only

        started = time.perf_counter()
        for _ in range(calls):
            counter.add(1)
        one_by_one = time.perf_counter() - started

        batch = meshrpc.BatchProxy(counter)
        for _ in range(calls):
            batch.add(1)  # recorded, not sent
        started = time.perf_counter()
        results = list(batch())  # one message there, one back; results in order
        batched = time.perf_counter() - started
        print(f"{calls} calls one by one: {one_by_one * 1000:.1f} ms; as one batch: {batched * 1000:.1f} ms "
              f"(last result {results[-1]})")

        started = time.perf_counter()
        counter.note("oneway calls return at once")  # the server takes 0.5 s over it
        print(f"oneway call returned after {(time.perf_counter() - started) * 1000:.1f} ms")

        batch.add(1000)
        batch.note("a oneway batch")
        started = time.perf_counter()
        batch(oneway=True)  # sent, not waited for: it runs while we go on
        print(f"oneway batch sent after {(time.perf_counter() - started) * 1000:.1f} ms")

        expected = 2 * calls + 1000
        deadline = time.monotonic() + 10
        while (total := counter.summary()["total"]) != expected:  # it ran when its add(1000) shows
            if time.monotonic() > deadline:
                print(f"the oneway batch did not run: total {total}, expected {expected}")
                return 1
            time.sleep(0.01)
        print(f"total {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
