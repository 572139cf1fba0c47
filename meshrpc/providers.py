"""One provider set from several registries (the mesh's mDNS registry, the etcd mirror).

A name announced on two registries is one provider: entries are merged by (name, uri), the newer
announcement (incarnation, version) winning. A *view* is anything with the registry query API:
`lookup(name)`, `yplookup(meta_all, meta_any)`, `subscribe(callback) -> unsubscribe` and `is_local(host)`
(meshrpc.mesh.Registry and meshrpc.etcd.Mirror both are).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import NamingError

Query = Callable[[Any], list[Any]]

_rng = random.Random()


def merged(named_views: Sequence[tuple[str, Any]], query: Query) -> list[tuple[Any, str]]:
    """(entry, source) per distinct (name, uri), newest first; source names the view that had the newest copy."""
    best: dict[tuple[str, str], tuple[Any, str]] = {}
    failures: list[NamingError] = []
    for source, view in named_views:
        try:
            found = query(view)
        except NamingError as exc:      # one registry out of reach: the others still answer
            failures.append(exc)
            continue
        for entry in found:
            seen = best.get(entry.key)
            if seen is None or entry.order > seen[0].order:
                best[entry.key] = (entry, source)
    if failures and len(failures) == len(named_views):
        raise failures[0]
    return sorted(best.values(), key=lambda pair: pair[0].order, reverse=True)


def wait_merged(named_views: Sequence[tuple[str, Any]], query: Query, timeout: float) -> list[tuple[Any, str]]:
    """merged() as soon as it finds something; [] after timeout seconds (woken by any view's news)."""
    found = merged(named_views, query)         # the first query also starts each view
    if found or timeout <= 0:
        return found
    news = threading.Event()
    unsubscribes = [view.subscribe(lambda event, entry: news.set()) for _, view in named_views]
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = merged(named_views, query)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            news.wait(remaining)
            news.clear()
    finally:
        for unsubscribe in unsubscribes:
            unsubscribe()


def pick(candidates: Iterable[tuple[Any, str]], is_local: Callable[[str], bool]) -> tuple[Any, str] | None:
    """The replica policy of the mesh: a provider on this machine first, else a random one."""
    pool = list(candidates)
    local = [pair for pair in pool if is_local(pair[0].host)]
    pool = local or pool
    return _rng.choice(pool) if pool else None
