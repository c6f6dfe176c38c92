"""The writer thread: group commit, and a failing write kept and retried until it lands."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.retry import Retry, retrying
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.store.writer import Writer
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.db import count
from driverlog_daemon.testing.events import ci_line
from driverlog_daemon.testing.site import verification


def test_group_commit_and_cursor(tmp_path: Path, registry: Registry) -> None:
    store = Store(tmp_path / "d.sqlite")
    pipeline = Pipeline(registry, store, server="gerrit:29418")
    writer = Writer(pipeline, batch_rows=50, flush_seconds=0.05)
    writer.start()
    for n in range(120):
        writer.put_block(ci_line(n))
    assert writer.stop()
    assert count(tmp_path / "d.sqlite") == 120
    # stamps a second apart, read within milliseconds: faster than any clock, so the later ones count as the
    # estimate of Gerrit's time (parse.clock) and the cursor stops short of the last
    cursor = store.cursor("gerrit:29418")
    assert cursor is not None and 1_750_000_000 < cursor <= 1_750_000_000 + 119
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


def test_write_is_retried_while_another_process_holds_the_lock(store: Store, registry: Registry) -> None:
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    store.conn.execute("PRAGMA busy_timeout = 0")
    import threading

    failures: list[int] = []
    release = threading.Timer(0.05, lambda: other.execute("COMMIT"))
    release.start()
    res = retrying(lambda: store.commit(Batch("stream", [verification(registry)])),
                   Retry(quiet=(0.01, 0.01, 0.01, 5.0)), failed=lambda error, n, delay: failures.append(n))
    release.join()
    assert res.inserted == 1 and len(failures) >= 1


def test_storage_faults_are_retried_until_they_clear(tmp_path: Path, registry: Registry) -> None:
    """A full database (max_page_count) and a read-only one (query_only): writes fail, the batch is kept and
    retried, the writer reports failing (so /healthz says 503 with the reason), and everything lands after."""
    path = tmp_path / "d.sqlite"
    store = Store(path)
    pipeline = Pipeline(registry, store)
    writer = Writer(pipeline, flush_seconds=0.01, retry=Retry(quiet=(0.01,)))
    writer.start()
    sample = pipeline.metrics.registry.get_sample_value
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    writer.put_block(b"".join(ci_line(n) for n in range(1, 200)))
    assert wait_until(lambda: (sample("driverlog_db_write_errors_total") or 0) >= 2)
    assert writer.failing and count(path) == 0
    store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert wait_until(lambda: not writer.failing and count(path) == 199)
    store.conn.execute("PRAGMA query_only = ON")  # read-only (a file mode does not stop root; this does)
    errors = sample("driverlog_db_write_errors_total") or 0
    writer.put_block(ci_line(500))
    assert wait_until(lambda: (sample("driverlog_db_write_errors_total") or 0) > errors + 1)
    assert writer.failing
    store.conn.execute("PRAGMA query_only = OFF")
    assert wait_until(lambda: not writer.failing and count(path) == 200)
    assert writer.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_that_dies_says_so_to_its_waiters_and_its_stop(tmp_path: Path, registry: Registry) -> None:
    # Not a line's fault (those cost only themselves): the thread ends loudly, and nobody waits on it for good.
    pipeline = Pipeline(registry, Store(tmp_path / "d.sqlite"))
    writer = Writer(pipeline, max_queue=2)

    def absorb(*_: object) -> None:
        raise RuntimeError("a bug in the writer itself")

    pipeline.absorb = absorb  # type: ignore[method-assign]
    writer.start()
    done = writer.put_backfill([])
    with pytest.raises(RuntimeError, match="a bug in the writer itself"):
        done.result(timeout=10)
    assert wait_until(lambda: not writer.alive)
    assert isinstance(writer.died, RuntimeError)
    writer.queue.put_nowait((b"", 0.0))
    writer.queue.put_nowait((b"", 0.0))  # full, and nobody takes from it
    assert writer.stop(timeout=1.0) is False


def test_the_queue_is_bounded_in_bytes_and_the_reader_waits_instead_of_dropping(tmp_path: Path,
                                                                                 registry: Registry) -> None:
    path = tmp_path / "d.sqlite"
    store = Store(path)
    store.conn.execute("PRAGMA busy_timeout = 10")
    pipeline = Pipeline(registry, store)
    blocks = [b"".join(ci_line(b * 300 + i) for i in range(300)) for b in range(10)]  # ~90 KB each
    writer = Writer(pipeline, max_bytes=2 * len(blocks[0]), batch_rows=100, retry=Retry(quiet=(0.01,)))
    writer.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer cannot commit: blocks pile up before it
    reader = threading.Thread(target=lambda: [writer.put_block(b) for b in blocks])
    try:
        reader.start()
        assert wait_until(lambda: writer.failing)
        reader.join(1.0)
        assert reader.is_alive()  # it waits: ten blocks do not fit
        assert 0 < writer.queued_bytes <= writer.max_bytes
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    reader.join(30)
    assert not reader.is_alive() and writer.stop()
    assert count(path) == 3000 and writer.queued_bytes == 0
