"""The writer thread: group commit, and a failing write kept and retried until it lands."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from driverlog_daemon.pipeline import Pipeline
from driverlog_daemon.writer import Retry, Writer
from driverlog_daemon.registry import Registry
from driverlog_daemon.store import Store

from .conftest import comment_event, line
from .gerrit import wait_until


def ci_line(number: int) -> bytes:
    text = f"Patch Set 1:\n\n- acme-cinder-fc https://ci/{number} : SUCCESS in 1h"
    return line(comment_event(comment=text, number=number, patch_set=1, created_on=1_750_000_000 + number))


def count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM verifications").fetchone()[0])
    finally:
        conn.close()


def test_group_commit_and_cursor(tmp_path: Path, registry: Registry) -> None:
    store = Store(tmp_path / "d.sqlite")
    pipeline = Pipeline(registry, store, server="gerrit:29418")
    writer = Writer(pipeline, batch_rows=50, flush_seconds=0.05)
    writer.start()
    for n in range(120):
        writer.put_block(ci_line(n))
    assert writer.stop()
    assert count(tmp_path / "d.sqlite") == 120
    assert store.cursor("gerrit:29418") == 1_750_000_000 + 119
    batches = pipeline.metrics.registry.get_sample_value("driverlog_db_batch_rows_count")
    assert batches is not None and batches < 120  # many rows per transaction
    sample = pipeline.metrics.registry.get_sample_value
    assert sample("driverlog_ingest_latency_seconds_count") == 120  # line read -> row committed, every row
    assert 0 < (sample("driverlog_ingest_latency_seconds_sum") or 0) < 120 * 30


def test_failing_write_is_retried_not_dropped(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "d.sqlite"
    store = Store(path)
    store.conn.execute("PRAGMA busy_timeout = 10")
    pipeline = Pipeline(registry, store)
    writer = Writer(pipeline, flush_seconds=0.01, retry=Retry(quiet=(0.01,)))
    writer.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: every commit fails for now
    try:
        writer.put_block(ci_line(1) + ci_line(2))
        sample = pipeline.metrics.registry.get_sample_value
        assert wait_until(lambda: (sample("driverlog_db_write_errors_total") or 0) >= 2)
        assert writer.failing
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert wait_until(lambda: not writer.failing)
    assert writer.stop()
    assert count(path) == 2
