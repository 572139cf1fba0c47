"""Feeds a Mirror from etcd: one prefix read, then a watch from the next revision, on a thread.

A broken watch (member crash, leader change, silent connection) is re-established on the same or the
next member from the mirror's revision + 1: nothing is lost and nothing applied twice. A compacted
revision means the history is gone: read the prefix again (the mirror turns the difference into
events). When no member answers, the mirror is marked stale and keeps serving; attempts go on every
ETCD_RETRY_INTERVAL seconds.
"""

from __future__ import annotations

import logging
import threading

from ..config import Settings
from ..errors import NamingError
from .gateway import Compacted, Gateway, WatchBroken
from .mirror import Mirror

log = logging.getLogger("meshrpc.etcd")


class Watcher:
    def __init__(self, mirror: Mirror, settings: Settings, gateway: Gateway | None = None) -> None:
        self.mirror = mirror
        self.settings = settings
        self.gateway = gateway or Gateway(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"meshrpc-etcd-watch-{mirror.realm}", daemon=True)
        self.relists = 0            # prefix reads (1 + one per compaction)
        self.reconnects = 0         # watches re-established

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        must_list = True
        failures = 0
        members = len(self.gateway.target.members)
        while not self._stop.is_set():
            try:
                if must_list:
                    revision, kvs = self.gateway.range_prefix(self.mirror.prefix)
                    self.mirror.load(revision, kvs)
                    self.relists += 1
                    must_list = False
                for result in self.gateway.watch(self.mirror.prefix, self.mirror.revision + 1,
                                                 self.settings.ETCD_WATCH_IDLE, self._stop):
                    failures = 0
                    self.mirror.apply(result["revision"], result["events"])
            except Compacted as exc:
                log.info("etcd: realm %r: %s; reading it again", self.mirror.realm, exc)
                must_list = True
            except WatchBroken as exc:
                if self._stop.is_set():
                    return
                failures += 1
                self.reconnects += 1
                log.debug("etcd: watch of realm %r broke: %s", self.mirror.realm, exc)
                if failures > 1:                          # re-established on the same member failed too
                    self.gateway.advance()
                if failures > members:                    # every member failed once: etcd is out of reach
                    self.mirror.set_stale(f"etcd unreachable at {self.gateway.target} ({exc}): check that its "
                                          f"members run and this machine can reach them")
                    self._stop.wait(self.settings.ETCD_RETRY_INTERVAL)
            except NamingError as exc:
                self.mirror.set_stale(str(exc))
                self._stop.wait(self.settings.ETCD_RETRY_INTERVAL)
            except Exception as exc:  # noqa: BLE001 - the feeder must survive anything and keep trying
                log.exception("etcd: watcher of realm %r failed", self.mirror.realm)
                self.mirror.set_stale(f"etcd watcher failed: {exc}")
                self._stop.wait(self.settings.ETCD_RETRY_INTERVAL)

    def close(self) -> None:
        self._stop.set()
        self.gateway.close()
        self._thread.join(self.settings.ETCD_TIMEOUT + 1)
