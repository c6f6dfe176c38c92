"""The one thread that writes: a bounded queue of blocks and backfills, group commits, the one retry loop.

    stream reader --blocks of lines--> bounded queue --> Writer: examine -> count -> group commit --> SQLite
    backfill worker --review messages--^

The reader never waits on processing (the queue absorbs bursts; only a full queue makes it wait, so nothing is
dropped). Gaps are opened through the queue too, so a gap always starts after every block read before the fault.
Every write goes through :func:`retry.retrying`: a failing write is retried with a growing delay and its batch kept.
"""

from __future__ import annotations

import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from driverlog_daemon.logs import get_logger
from driverlog_daemon.model import BackfillRun, ChangeFact, CommentAdded, Source
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.pipeline import Pending, Pipeline
from driverlog_daemon.store.queue_items import (
    Backfilled,
    Delivery,
    GapFailed,
    Imported,
    ImportFailed,
    OpenGap,
    QueuedBatch,
    Rejudge,
    Reload,
)
from driverlog_daemon.store.retry import DEFAULT_RETRY, Retry, retrying
from driverlog_daemon.store.store import Batch, BatchResult

if TYPE_CHECKING:
    from concurrent.futures import Future

    from driverlog_daemon.model import ImportStep
    from driverlog_daemon.store.outbox import DeliveryOutcome
    from driverlog_daemon.store.registry_apply import Applied, HistorySettings

log = get_logger("driverlog.writer")
_T = TypeVar("_T")


class Writer:
    """The one thread that writes: takes blocks and backfilled comments from a bounded queue, group-commits.

    A stream batch is committed when it holds ``batch_rows`` results or its oldest result has waited
    ``flush_seconds``, whichever comes first. When the queue is full, producers wait: nothing is dropped.
    A failing commit is retried with a growing delay and the batch kept, never dropped.
    """

    def __init__(self, pipeline: Pipeline, *, max_queue: int = 4096, max_bytes: int = 64 << 20,
                 batch_rows: int = 500,
                 flush_seconds: float = 0.05, on_dropped_output: Callable[[int | None], None] | None = None,
                 retry: Retry = DEFAULT_RETRY, clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.retry = retry
        self.queue: queue.Queue[tuple[bytes, float] | bytes | Backfilled | Reload | OpenGap | GapFailed
                                | Imported | Rejudge | ImportFailed | QueuedBatch | Delivery | None] = (
            queue.Queue(maxsize=max_queue))
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.on_dropped_output = on_dropped_output
        self.clock = clock
        self.last_progress = clock()
        self.failing = False  # the last commit attempt failed
        self.died: BaseException | None = None  # why the thread ended, when it did not end by stop()
        self._pending = Pending()
        self._pending_since: float | None = None
        #: the stream's bytes queued and not yet examined: a reader ahead of the writer waits past ``max_bytes``
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self._bytes_taken = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="driverlog-writer", daemon=True)

    # ------------------------------------------------------------------------------------ producers

    def put_block(self, block: bytes) -> None:
        """Queue a block of stream lines; waits while the blocks queued hold ``max_bytes`` (one block always
        passes, however large: the reader bounds a line by ``max_event_bytes``)."""
        with self._bytes_taken:
            while (self.queued_bytes and self.queued_bytes + len(block) > self.max_bytes
                   and self._thread.is_alive()):
                self._bytes_taken.wait(0.5)
            self.queued_bytes += len(block)
        self.queue.put((block, time.monotonic()))
        self.pipeline.metrics.queue_depth.set(self.queue.qsize())
        self.pipeline.metrics.queue_bytes.set(self.queued_bytes)

    def _took(self, block: bytes) -> None:
        """A block examined: its bytes are free (what it yielded is in the pending batch, bounded by rows)."""
        with self._bytes_taken:
            self.queued_bytes -= len(block)
            self._bytes_taken.notify_all()
        self.pipeline.metrics.queue_bytes.set(self.queued_bytes)

    def put_backfill(self, comments: list[CommentAdded], changes: list[ChangeFact] | None = None,
                     close_gaps_up_to: int | None = None, run: BackfillRun | None = None) -> Future[BatchResult]:
        """Commit a backfill's messages and change facts; close the gaps up to ``close_gaps_up_to`` and record
        ``run`` (what it asked of Gerrit) in the same transaction."""
        from concurrent.futures import Future

        done: Future[BatchResult] = Future()
        self.queue.put(Backfilled(comments, changes or [], done, close_gaps_up_to, run))
        return done

    def open_gap(self, reason: str, fallback_since: int) -> Future[tuple[int, int]]:
        """Open a gap after everything already queued (so after the blocks read before the fault): (id, since)."""
        from concurrent.futures import Future

        done: Future[tuple[int, int]] = Future()
        self.queue.put(OpenGap(reason, fallback_since, done))
        return done

    def gap_failed(self, up_to: int, error: str) -> None:
        self.queue.put(GapFailed(up_to, error))

    def import_failed(self, import_id: int, error: str) -> None:
        self.queue.put(ImportFailed(import_id, error))

    def put_batch(self, batch: Batch) -> Future[BatchResult]:
        """Commit a batch made elsewhere (a tool, a test) as it is, after everything already queued."""
        from concurrent.futures import Future

        done: Future[BatchResult] = Future()
        self.queue.put(QueuedBatch(batch, done))
        return done

    def record_delivery(self, outcome: DeliveryOutcome) -> Future[None]:
        """A webhook delivery's outcome (the delivery threads only read the outbox: only this thread writes)."""
        from concurrent.futures import Future

        done: Future[None] = Future()
        self.queue.put(Delivery(outcome, done))
        return done

    def reload(self, registry: Registry, raw: bytes | None = None, history: HistorySettings | None = None, *,
               timeout: float | None = None) -> Future[Applied | None]:
        """Use ``registry`` from the next block on; with its bytes, apply it to the file (version, import).
        Cancelling the future before the writer takes it up means it is never applied (``queue.Full`` after
        ``timeout`` seconds: not queued at all)."""
        from concurrent.futures import Future

        done: Future[Applied | None] = Future()
        self.queue.put(Reload(registry, done, raw, history), timeout=timeout)
        return done

    def put_import(self, comments: list[CommentAdded], changes: list[ChangeFact], step: ImportStep, *,
                   context: str) -> Future[BatchResult]:
        """Commit a history import's step: its messages and facts, with its progress (``context``: ``import``
        for the first start's, ``registry`` for a registry change's: see ``Store.record``)."""
        from concurrent.futures import Future

        done: Future[BatchResult] = Future()
        self.queue.put(Imported(comments, changes, step, context, done))
        return done

    def rejudge(self, driver_id: int, step: ImportStep) -> Future[int]:
        """Judge a driver's kept comments again under the registry in force (a registry change): how many of its
        verifications changed."""
        from concurrent.futures import Future

        done: Future[int] = Future()
        self.queue.put(Rejudge(driver_id, step, done))
        return done

    # ---------------------------------------------------------------------------------------- thread

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 4.0) -> bool:
        """Commit everything queued, then end the thread. False if it did not finish within ``timeout``, or had
        died before (then what it had taken was not all committed)."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self.queue.put(None, timeout=0.1)
                break
            except queue.Full:  # a writer alive but behind; a dead one never takes it
                if time.monotonic() > deadline:
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive() and self.died is None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # not a line's fault (those cost only themselves): the process must end
            self.died = exc
            log.critical("writer_died", error=f"{type(exc).__name__}: {exc}", exc_info=True,
                         uncommitted=len(self._pending.verifications))
            raise

    def _step(self) -> bool:
        """Take one item from the queue and do it; False after the last (``None``: stop)."""
        wait = self.flush_seconds if self._pending_since is not None else 1.0
        try:
            item = self.queue.get(timeout=wait)
        except queue.Empty:
            item = _TICK
        self.pipeline.metrics.queue_depth.set(self.queue.qsize())
        if item is None:
            self._commit_stream(final=True)
            return False
        try:
            self._handle(item)
        except BaseException as exc:  # whoever waits on it hears why, rather than waiting for good
            done = getattr(item, "done", None)
            if done is not None and not done.done():
                done.set_exception(exc)
            raise
        due = self._pending_since is not None and self.clock() - self._pending_since >= self.flush_seconds
        if len(self._pending.verifications) + len(self._pending.changes) >= self.batch_rows or due or (
                self._pending.position is not None and self.queue.empty()):
            self._commit_stream()
        self.last_progress = self.clock()
        return True

    def _handle(self, item: Any) -> None:
        """Do what one queue item asks (a block, a backfill, a gap, a reload, …)."""
        if isinstance(item, tuple):  # a block of stream lines and when it was read
            block, read_at = item
            # the stream's position before this block (on this run, or the stored cursor): proven ground
            position_before = (self._pending.position if self._pending.position is not None
                               else self.pipeline.stream_position)
            if position_before is None and self.pipeline.server is not None:  # no event yet on this run
                position_before = self.pipeline.store.cursor(self.pipeline.server)
            before = len(self._pending.verifications)
            try:
                findings = self.pipeline.examine(block)
                self.pipeline.locate(block, read_at, self._pending)
            finally:
                self._took(block)
            self.pipeline.absorb(findings, self._pending)
            dropped = findings.dropped_output
            if len(self._pending.verifications) > before:
                self._pending.read_at.append((read_at, len(self._pending.verifications) - before))
            for v in self._pending.verifications[before:]:
                log.info("ci_result", ci_account=v.ci_account, change=v.change_number, patch_set=v.patch_set,
                         driver="/".join(v.driver_key), result=v.result, release=v.release or None)
            if self._pending.verifications and self._pending_since is None:
                self._pending_since = self.clock()
            if dropped:
                self._commit_stream()
                # Gerrit discarded events before the marker: what came before this block is all we know
                gap = self._open_gap("dropped-output", position_before)
                if self.on_dropped_output is not None:
                    self.on_dropped_output(gap[1] if gap else position_before)
        elif isinstance(item, Backfilled):
            self._commit_stream()
            batch = Pending()
            self.pipeline.absorb(self.pipeline.examine_messages(item.comments, item.changes), batch)
            result = self._commit(batch, "backfill", item.close_gaps_up_to, run=item.run)
            item.done.set_result(result)
        elif isinstance(item, OpenGap):
            self._commit_stream()
            try:
                position = self.pipeline.stream_position
                opened = self._open_gap(item.reason, item.fallback_since if position is None else position)
            except sqlite3.Error as exc:
                item.done.set_exception(exc)
            else:
                if opened is None:
                    item.done.set_exception(RuntimeError("no Gerrit server: no gap to open"))
                else:
                    item.done.set_result(opened)
        elif isinstance(item, GapFailed):
            if self.pipeline.server is not None:
                self._retrying(functools.partial(self.pipeline.store.gap_failed, self.pipeline.server,
                                                 item.up_to, item.error))
        elif isinstance(item, QueuedBatch):
            self._commit_stream()
            item.done.set_result(self._retrying(functools.partial(self.pipeline.store.commit, item.batch)))
        elif isinstance(item, Delivery):
            self._retrying(functools.partial(self.pipeline.store.record_delivery, item.outcome))
            item.done.set_result(None)
        elif isinstance(item, ImportFailed):
            self._retrying(functools.partial(self.pipeline.store.import_failed, item.import_id, item.error))
        elif isinstance(item, Reload):
            if not item.done.set_running_or_notify_cancel():  # cancelled while it waited: never applied
                return
            self._commit_stream()
            try:
                applied = self.pipeline.swap_registry(item.registry, item.raw, item.history)
            except Exception as exc:  # keep the old registry; the caller reports it
                item.done.set_exception(exc)
            else:
                item.done.set_result(applied)
        elif isinstance(item, Imported):
            self._commit_stream()
            batch = Pending()
            self.pipeline.absorb(self.pipeline.examine_messages(item.comments, item.changes), batch)
            item.done.set_result(self._commit(batch, "backfill", step=item.step, context=item.context))
        elif isinstance(item, Rejudge):
            self._commit_stream()
            registry = self.pipeline.registry
            try:
                changed = self._retrying(functools.partial(self._rejudge, item, registry))
            except Exception as exc:  # a bug, not the database: reported by the import, which retries
                item.done.set_exception(exc)
            else:
                item.done.set_result(changed)

    def _commit_stream(self, final: bool = False) -> None:
        if self._pending.verifications or self._pending.position is not None:
            self._commit(self._pending, "stream", final=final)
        self._pending_since = None

    def _rejudge(self, item: Rejudge, registry: Registry) -> int:
        changed = self.pipeline.store.rejudge(item.driver_id, registry, item.step)
        return changed.total

    def _open_gap(self, reason: str, since: int | None) -> tuple[int, int] | None:
        """Record a gap (retried like any write); None without a server or a time to start it from."""
        server = self.pipeline.server
        if server is None or since is None:
            return None
        gap_id = self._retrying(lambda: self.pipeline.store.open_gap(server, since, reason))
        log.warning("gap_opened", server=server, gap=gap_id, reason=reason, since=since)
        return gap_id, since

    def _retrying(self, write: Callable[[], _T], *, rows: int | None = None,
                  give_up: Callable[[], _T] | None = None) -> _T:
        """Run a write until it succeeds (:func:`retrying`), reporting the failures past the quiet ones; with
        ``give_up`` (shutdown), stop after five of those and return what it gives."""
        metrics = self.pipeline.metrics

        def failed(error: sqlite3.Error, failures: int, delay: float) -> None:
            if self.retry.quietly(failures, error):
                metrics.db_write_retries.inc()
                return
            self.failing = True
            metrics.db_write_errors.inc()
            log.error("db_write_failed", error=str(error), rows=rows, retry_in=delay)

        try:
            result = retrying(write, self.retry, failed=failed,
                              give_up_after=None if give_up is None else len(self.retry.quiet) + 5)
        except sqlite3.Error:
            assert give_up is not None
            return give_up()
        self.failing = False
        return result

    def _commit(self, pending: Pending, source: Source, close_gaps_up_to: int | None = None,
                final: bool = False, run: BackfillRun | None = None, step: ImportStep | None = None,
                context: str | None = None) -> BatchResult:
        rows = len(pending.verifications)

        def abandon() -> BatchResult:
            log.error("db_write_abandoned_at_shutdown", rows=rows)
            return BatchResult(0, 0, 0)

        return self._retrying(functools.partial(self.pipeline.commit, pending, source, close_gaps_up_to, run,
                                                step=step, context=context),
                              rows=rows, give_up=abandon if final else None)

_TICK = b""
