"""SIGHUP's reload ends as applied or as cancelled, never both, and nobody waits on it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from structlog.testing import capture_logs

from driverlog_daemon.daemon.reload import Reloads
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.registry.checks import DEFAULT_REGISTRY_PATH
from driverlog_daemon.registry.load import load_registry
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.registry_apply import HistorySettings
from driverlog_daemon.store.retry import Retry
from driverlog_daemon.store.store import Store
from driverlog_daemon.store.writer import Writer
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.events import ci_line


def changed_registry(tmp_path: Path) -> Path:
    doc = json.loads(DEFAULT_REGISTRY_PATH.read_text())
    doc["drivers"] = doc["drivers"][1:]  # one driver fewer
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_reload_the_busy_writer_never_took_up_is_cancelled_and_never_applied(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    store = Store(db)
    store.conn.execute("PRAGMA busy_timeout = 10")
    metrics = Metrics()
    pipeline = Pipeline(registry, store, metrics=metrics)
    writer = Writer(pipeline, flush_seconds=0.01, retry=Retry(quiet=(0.01,)))
    applied: list[int] = []
    now = [0.0]
    reloads = Reloads(writer, metrics, lambda: HistorySettings(90, 0, first=False, gerrit_now=0, queries=False),
                      lambda reg, raw, a: applied.append(len(reg.drivers)), timeout=30, clock=lambda: now[0])
    writer.start()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: the writer retries its batch
    path = changed_registry(tmp_path)
    try:
        writer.put_block(ci_line(1))
        assert wait_until(lambda: writer.failing)
        with capture_logs() as logs:
            started = time.monotonic()
            future = reloads.request(str(path))
            assert future is not None and time.monotonic() - started < 2  # queued, not waited for
            reloads.check()
            assert not future.done()  # not yet timed out
            now[0] = 31.0
            reloads.check()
            assert future.cancelled()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert wait_until(lambda: not writer.failing and writer.queue.empty())
    assert writer.stop()
    assert [e["error"] for e in logs if e["event"] == "registry_reload_failed"] == [
        "cancelled: the writer did not take it up within 30 s (the database is busy?); nothing applied"]
    assert applied == [] and len(pipeline.registry.drivers) == len(registry.drivers)  # the old one stays
    assert metrics.registry.get_sample_value("driverlog_registry_reloads_total", {"result": "error"}) == 1


def test_a_reload_taken_up_is_applied_and_a_newer_one_supersedes_a_waiting_one(tmp_path: Path) -> None:
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    store = Store(tmp_path / "d.sqlite")
    metrics = Metrics()
    pipeline = Pipeline(registry, store, metrics=metrics)
    writer = Writer(pipeline)
    applied: list[int] = []
    reloads = Reloads(writer, metrics, lambda: HistorySettings(90, 0, first=False, gerrit_now=0, queries=False),
                      lambda reg, raw, a: applied.append(len(reg.drivers)))
    path = changed_registry(tmp_path)
    first = reloads.request(str(path))  # the writer is not running yet: it waits in the queue
    second = reloads.request(str(path))
    assert first is not None and first.cancelled() and second is not None
    writer.start()
    try:
        second.result(timeout=10)
        assert wait_until(lambda: applied == [len(registry.drivers) - 1])
        assert len(pipeline.registry.drivers) == len(registry.drivers) - 1
    finally:
        assert writer.stop()
