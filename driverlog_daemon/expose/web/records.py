"""Every registry driver's record — what the page, the API and the badges are made of — kept current off the
request path.

A background thread of each web worker looks at the database's state (``PRAGMA data_version``) five times a
second and rebuilds the records when it, the registry or the minute changed — at most once a second (or half the
staleness bound, if that is shorter), so that a busy writer does not keep the workers rebuilding. Before the new
records are published, ``prepare`` (the app's re-rendering of its recent answers) runs on them, so that a request
finds them ready. Requests meanwhile get the records at hand, unless those are behind the database by more than
``max_staleness``: then, and for the very first request, the request waits for the rebuild.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from driverlog_daemon.logs import get_logger
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import reads

log = get_logger("driverlog.web")

POLL_SECONDS = 0.2
MIN_INTERVAL = 1.0  # between rebuilds while the database keeps changing (a busy writer)


class Records(NamedTuple):
    key: tuple[Any, ...]  # (database state, registry, minute)
    registry: Registry
    records: list[dict[str, Any]]


Build = Callable[[sqlite3.Connection, Registry, float], list[dict[str, Any]]]  # reads in one snapshot


class RecordsKeeper:
    def __init__(self, reader: reads.Reader, registry: Callable[[], Registry], build: Build, *,
                 max_staleness: float = 5.0, clock: Callable[[], float] = time.time,
                 prepare: Callable[[Records], None] = lambda records: None) -> None:
        self.reader, self.registry, self.build = reader, registry, build
        self.max_staleness = max_staleness
        self.min_interval = min(MIN_INTERVAL, max_staleness / 2)
        self.clock = clock
        self.prepare = prepare
        self._records: Records | None = None
        self._lock = threading.Lock()  # one rebuild at a time
        self._stale_since: float | None = None  # when the records were first seen behind the database
        self._built_at = 0.0
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def key(self, registry: Registry) -> tuple[Any, ...]:
        return self.reader.version(), id(registry), int(self.clock() // 60)

    def current(self) -> Records:
        self._start()
        current = self._records
        key = self.key(self.registry())
        if current is not None and current.key == key:
            self._stale_since = None
            return current
        now = time.monotonic()
        if self._stale_since is None:
            self._stale_since = now
        self._wake.set()
        if current is not None and now - self._stale_since < self.max_staleness:
            return current
        return self.rebuild(prepare=False)

    def rebuild(self, *, prepare: bool = True) -> Records:
        with self._lock:  # one rebuild at a time; the others then find it done
            registry = self.registry()
            key = self.key(registry)
            if self._records is not None and self._records.key == key:
                return self._records
            with self.reader.snapshot() as conn:
                fresh = Records(key, registry, self.build(conn, registry, self.clock()))
            if prepare:
                self.prepare(fresh)
            self._records, self._stale_since, self._built_at = fresh, None, time.monotonic()
            return fresh

    def _start(self) -> None:
        # Started on first use, in the process that serves (a pre-fork server's workers), never before a fork.
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._loop, name="driverlog-web-records", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            try:
                current = self._records
                if current is None or current.key == self.key(self.registry()):
                    continue
                stale_for = time.monotonic() - (self._stale_since or time.monotonic())
                if time.monotonic() - self._built_at >= self.min_interval or stale_for >= self.min_interval:
                    self.rebuild()
            except Exception as exc:  # a database being replaced, say: the next round tries again
                log.warning("records_rebuild_failed", error=f"{type(exc).__name__}: {exc}")
