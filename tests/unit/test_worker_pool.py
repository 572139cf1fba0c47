"""server/pool.py: the attributes a daemon worker reads after every request (backlogged, has_room)
always say what the pool's counts say, as tasks come, wait, run and end."""

from __future__ import annotations

import threading

from meshrpc.server.pool import WorkerPool


def backlog(pool: WorkerPool) -> int:
    """Tasks submitted that no worker (running, or starting for them) will take soon."""
    return max(0, pool._queued - pool._idle - pool._starting)


def agrees(pool: WorkerPool) -> bool:
    with pool._lock:
        roomy = len(pool._threads) * 2 <= pool.max_workers  # at most half the workers started
        return pool.backlogged == (backlog(pool) > 0) and pool.has_room == roomy


def test_backlogged_and_has_room_follow_the_counts():
    pool = WorkerPool(4)
    assert agrees(pool) and not pool.backlogged and pool.has_room
    release = threading.Event()
    started = threading.Semaphore(0)
    seen: list[bool] = []

    def task() -> None:
        started.release()
        seen.append(agrees(pool))
        release.wait(30)

    try:
        for _ in range(4):  # every worker busy
            pool.submit(task)
            assert agrees(pool)
        for _ in range(4):
            assert started.acquire(timeout=30)
        assert agrees(pool) and not pool.has_room and not pool.backlogged
        pool.submit(task)  # no worker left for it: waiting
        assert agrees(pool) and pool.backlogged and backlog(pool) == 1
        release.set()
        assert started.acquire(timeout=30)  # taken by a worker once one is free
        for _ in range(200):
            if not pool.backlogged:
                break
            release.wait(0.01)
        assert agrees(pool) and not pool.backlogged
    finally:
        release.set()
        pool.close(wait=10)
    assert all(seen) and agrees(pool)
