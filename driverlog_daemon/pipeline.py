"""The pipeline shared by every source: block of lines -> scan -> match -> batch -> store.

Sources (live stream, backfill, replay file) hand over blocks of complete lines (or, for backfill, review
messages already decoded); :class:`Pipeline` turns them into verifications and commits them in batches,
keeping the counters every front end reports (replay's summary, the metrics, systemd's STATUS line).
"""

from __future__ import annotations

import functools
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from driverlog_daemon.events import Malformed, Scanner, comment_fact
from driverlog_daemon.logs import get_logger
from driverlog_daemon.match import match_comment
from driverlog_daemon.model import ChangeFact, CommentAdded, Source, Verification
from driverlog_daemon.registry import Registry
from driverlog_daemon.store import BatchResult, ChangeRows, Store

if TYPE_CHECKING:  # imported when used: replay's start-up need not pay for them
    from concurrent.futures import Future

    from driverlog_daemon.metrics import Metrics

log = get_logger("driverlog.pipeline")


class _Unmeasured:
    """Metrics that measure nothing (any attribute, call or label of it is itself)."""

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


#: For a one-shot command (``replay``): it prints its own summary, serves no /metrics, and so need not import
#: prometheus_client (0.06 s of its start-up).
UNMEASURED = cast("Metrics", _Unmeasured())


class Stats:
    """What a pipeline has seen and recorded since it started (replay's summary, the STATUS line)."""

    __slots__ = ("already_present", "by_type", "ci_comments", "last_verification_time", "lines", "malformed",
                 "newest_event_time", "recorded", "unmatched_ci_comments")

    def __init__(self) -> None:
        self.lines = 0
        self.by_type: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.ci_comments = 0
        self.unmatched_ci_comments: Counter[str] = Counter()
        self.recorded = 0
        self.already_present = 0
        self.newest_event_time: int | None = None
        self.last_verification_time: int | None = None


class Pending:
    """Verifications matched and change facts read but not yet committed, with the newest event time they cover."""

    __slots__ = ("changes", "newest_event_time", "read_at", "verifications")

    def __init__(self, changes: ChangeRows | None = None) -> None:
        self.verifications: list[Verification] = []
        self.changes = ChangeRows() if changes is None else changes  # merged by change as they come
        self.newest_event_time: int | None = None
        self.read_at: list[tuple[float, int]] = []  # (monotonic time a block was read, its rows)


class Outcome:
    """What a block (or a set of review messages) held: the pure result of scan + match, picklable."""

    __slots__ = ("by_type", "changes", "ci_comments", "lines", "malformed", "newest_event_time", "unmatched",
                 "verifications")

    def __init__(self, *, lines: int = 0, by_type: Counter[str] | None = None, malformed: list[Malformed] | None = None,
                 changes: Iterable[ChangeFact] = (), newest_event_time: int | None = None) -> None:
        self.lines = lines
        self.by_type: Counter[str] = Counter() if by_type is None else by_type
        self.malformed: list[Malformed] = [] if malformed is None else malformed
        self.ci_comments: Counter[str] = Counter()  # by CI account
        self.unmatched: Counter[str] = Counter()  # CI comments that matched no pattern, by account
        self.verifications: list[Verification] = []
        self.changes = ChangeRows(changes)  # of the registry's review projects, merged by change
        self.newest_event_time = newest_event_time

    @property
    def dropped_output(self) -> int:
        return self.by_type.get("dropped-output", 0)

    # Replay's workers send outcomes to the parent: named tuples pickle as a call of their class each (~3 µs to
    # dump, ~3 µs to load), plain tuples in C (~0.5 µs); the parent makes them named tuples again in C. (The
    # change rows are plain tuples already, merged by change in the worker.)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.lines, self.by_type, self.malformed, self.ci_comments, self.unmatched,
                [tuple(v) for v in self.verifications], self.changes, self.newest_event_time)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.lines, self.by_type, self.malformed, self.ci_comments, self.unmatched, verifications, self.changes,
         self.newest_event_time) = state
        self.verifications = [_as(Verification, v) for v in verifications]


_as = tuple.__new__  # _as(NamedTupleClass, plain_tuple): the named tuple, made in C


def new_scanner(registry: Registry) -> Scanner:
    """A scanner for the registry's CI accounts and the review projects whose change state is kept."""
    return Scanner(registry.ci_accounts, registry.review_projects)


def _warm_up(scanner: Scanner, registry: Registry) -> None:
    scanner.warm_up()
    registry.compile_patterns()


def examine(scanner: Scanner, registry: Registry, block: bytes, start: int = 0, end: int | None = None) -> Outcome:
    """Scan a block of complete lines and match its CI comments. No state, no I/O: safe in any process."""
    scan = scanner.scan(block, start, end)
    outcome = Outcome(lines=scan.lines, by_type=scan.by_type, malformed=scan.malformed, changes=scan.changes,
                      newest_event_time=scan.newest_event_time)
    _match(scan.comments, registry, outcome)
    return outcome


def _match(comments: Iterable[CommentAdded], registry: Registry, outcome: Outcome) -> None:
    projects = registry.review_projects
    facts = []
    for comment in comments:
        if comment.change.project in projects:
            facts.append(comment_fact(comment))
        result = match_comment(comment, registry)
        if not result.is_ci_comment:
            continue
        account = comment.author.username or ""
        outcome.ci_comments[account] += 1
        if result.verifications:
            outcome.verifications.extend(result.verifications)
        else:
            outcome.unmatched[account] += 1
    outcome.changes.add(facts)


class Pipeline:
    def __init__(self, registry: Registry, store: Store, *, metrics: Metrics | None = None,
                 server: str | None = None) -> None:
        self.store = store
        if metrics is None:
            from driverlog_daemon.metrics import Metrics

            metrics = Metrics()
        self.metrics = metrics
        self.server = server  # the cursor key in stream_state; None: do not move any cursor (replay)
        #: newest eventCreatedOn committed from the live stream (Gerrit's clock); a gap opened now starts there
        self.stream_newest = store.newest_event_time(server) if server else None
        self.stats = Stats()
        self._lock = threading.Lock()
        self.registry = registry
        self.scanner = new_scanner(registry)
        self.store.sync_drivers(registry)
        self.metrics.registry_drivers.set(len(registry.drivers))
        self.metrics.registry_ci_accounts.set(len(registry.by_account))
        self._driver_times: dict[tuple[str, str, str, str], int] = {}
        for project, vendor, name, account, t in store.driver_last_times():
            self._set_driver_time((project, vendor, name, account or ""), t)

    def _set_driver_time(self, labels: tuple[str, str, str, str], t: int) -> None:
        if t > self._driver_times.get(labels, -1):
            self._driver_times[labels] = t
            self.metrics.driver_last_verification.labels(*labels).set(t)

    def _note_driver_times(self, verifications: list[Verification]) -> None:
        for v in verifications:
            self._set_driver_time((*v.driver_key, v.ci_account), v.comment_time)

    def warm_up(self) -> None:
        """For a live daemon: compile and import now what the first events would otherwise wait for."""
        with self._lock:
            scanner, registry = self.scanner, self.registry
        _warm_up(scanner, registry)

    def swap_registry(self, registry: Registry) -> None:
        """Use a new (already validated) registry from the next block on; sync the drivers table first."""
        self.store.sync_drivers(registry)
        scanner = new_scanner(registry)
        _warm_up(scanner, registry)
        with self._lock:
            self.registry, self.scanner = registry, scanner
        self.metrics.registry_drivers.set(len(registry.drivers))
        self.metrics.registry_ci_accounts.set(len(registry.by_account))

    # ----------------------------------------------------------------------------------------- process

    def process_block(self, block: bytes, into: Pending, start: int = 0, end: int | None = None) -> int:
        """Scan ``block[start:end]``, complete lines, match its CI comments, add results to ``into``.

        Returns how many ``dropped-output`` events the block held (the caller triggers a backfill).
        """
        with self._lock:
            scanner, registry = self.scanner, self.registry
        outcome = examine(scanner, registry, block, start, end)
        self.absorb(outcome, into)
        return outcome.dropped_output

    def process_comments(self, comments: Iterable[CommentAdded], into: Pending,
                         changes: Iterable[ChangeFact] = ()) -> None:
        """Backfill's entry: review messages already decoded into :class:`CommentAdded`, and change facts."""
        with self._lock:
            registry = self.registry
        projects = registry.review_projects
        outcome = Outcome(changes=(c for c in changes if c.project in projects))
        _match(comments, registry, outcome)
        self.absorb(outcome, into)

    def absorb(self, outcome: Outcome, into: Pending) -> None:
        """Count what :func:`examine` found (stats, metrics, log) and add its results to ``into``."""
        stats = self.stats
        stats.lines += outcome.lines
        stats.by_type.update(outcome.by_type)
        self.metrics.count_events(outcome.by_type)
        for bad in outcome.malformed:
            stats.malformed[bad.reason] += 1
            self.metrics.malformed.labels(bad.reason).inc()
            log.warning("malformed_line", reason=bad.reason, excerpt=bad.excerpt)
        stats.ci_comments += sum(outcome.ci_comments.values())
        stats.unmatched_ci_comments.update(outcome.unmatched)
        for account, n in outcome.ci_comments.items():
            self.metrics.ci_comments.labels(account).inc(n)
        for account, n in outcome.unmatched.items():
            self.metrics.ci_comments_unmatched.labels(account).inc(n)
        into.verifications.extend(outcome.verifications)
        into.changes.merge(outcome.changes)
        t = outcome.newest_event_time
        if t is not None:
            if into.newest_event_time is None or t > into.newest_event_time:
                into.newest_event_time = t
            if stats.newest_event_time is None or t > stats.newest_event_time:
                stats.newest_event_time = t
                self.metrics.last_event_time.set(t)
        if outcome.dropped_output:
            self.metrics.dropped_output.inc(outcome.dropped_output)

    # ------------------------------------------------------------------------------------------ commit

    def commit(self, pending: Pending, source: Source, close_gaps_up_to: int | None = None) -> BatchResult:
        """Write a batch in one transaction, with the cursor when this pipeline has a server; a backfill batch
        closes the gaps it covered (ids up to ``close_gaps_up_to``) in the same transaction."""
        cursor = close = None
        if self.server is not None and pending.newest_event_time is not None and source == "stream":
            cursor = (self.server, pending.newest_event_time)
        if self.server is not None and close_gaps_up_to is not None:
            close = (self.server, close_gaps_up_to, self.stream_newest)
        retries_before = self.store.write_retries
        result = self.store.record(pending.verifications, source, cursor, changes=pending.changes, close=close)
        if cursor is not None and (self.stream_newest is None or cursor[1] > self.stream_newest):
            self.stream_newest = cursor[1]
        for gap_id, reason, opened_at in result.closed_gaps:
            log.info("gap_closed", server=self.server, gap=gap_id, reason=reason,
                     open_seconds=round(time.time() - opened_at, 3), recorded=result.inserted)
        if self.store.write_retries != retries_before:
            self.metrics.db_write_retries.inc(self.store.write_retries - retries_before)
        self.stats.recorded += result.inserted
        self.stats.already_present += result.already_present
        self.metrics.batch_rows.observe(len(pending.verifications))
        for kind, n in (("success", result.inserted_success), ("failure", result.inserted_failure)):
            if n:
                self.metrics.verifications.labels(source, kind).inc(n)
        if result.inserted:
            if self.metrics is not UNMEASURED:  # per-driver gauges: nothing to keep for a one-shot command
                self._note_driver_times(pending.verifications)
            newest = max(v.comment_time for v in pending.verifications)
            if self.stats.last_verification_time is None or newest > self.stats.last_verification_time:
                self.stats.last_verification_time = newest
                self.metrics.last_verification_time.set(newest)
        if result.already_present:
            self.metrics.duplicates.labels(source).inc(result.already_present)
        committed = time.monotonic()
        for read_at, rows in pending.read_at:  # line read -> row committed, per verification
            for _ in range(rows):
                self.metrics.ingest_latency.observe(committed - read_at)
        pending.read_at = []
        pending.verifications = []
        pending.changes = ChangeRows()
        pending.newest_event_time = None
        return result


# ------------------------------------------------------------------------------------------------ writer


# What the writer's queue carries besides blocks of stream lines (plain classes: a block is a tuple).

class _Backfilled:
    __slots__ = ("changes", "close_gaps_up_to", "comments", "done")

    def __init__(self, comments: list[CommentAdded], changes: list[ChangeFact], done: Future[BatchResult],
                 close_gaps_up_to: int | None = None) -> None:
        self.comments, self.changes, self.done, self.close_gaps_up_to = comments, changes, done, close_gaps_up_to


class _Reload:
    __slots__ = ("done", "registry")

    def __init__(self, registry: Registry, done: Future[None]) -> None:
        self.registry, self.done = registry, done


class _OpenGap:
    __slots__ = ("done", "fallback_since", "reason")

    def __init__(self, reason: str, fallback_since: int, done: Future[tuple[int, int]]) -> None:
        self.reason = reason
        self.fallback_since = fallback_since  # when nothing was ever committed from the stream: the initial import
        self.done = done  # (gap id, since)


class _GapFailed:
    __slots__ = ("error", "up_to")

    def __init__(self, up_to: int, error: str) -> None:
        self.up_to, self.error = up_to, error


class Writer:
    """The one thread that writes: takes blocks and backfilled comments from a bounded queue, group-commits.

    A stream batch is committed when it holds ``batch_rows`` results or its oldest result has waited
    ``flush_seconds``, whichever comes first. When the queue is full, producers wait: nothing is dropped.
    A failing commit is retried with a growing delay and the batch kept, never dropped.
    """

    def __init__(self, pipeline: Pipeline, *, max_queue: int = 4096, batch_rows: int = 500,
                 flush_seconds: float = 0.05, on_dropped_output: Callable[[int | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.queue: queue.Queue[tuple[bytes, float] | bytes | _Backfilled | _Reload | _OpenGap | _GapFailed | None] = (
            queue.Queue(maxsize=max_queue))
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.on_dropped_output = on_dropped_output
        self.clock = clock
        self.last_progress = clock()
        self.failing = False  # the last commit attempt failed
        self._pending = Pending()
        self._pending_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="driverlog-writer", daemon=True)

    # ------------------------------------------------------------------------------------ producers

    def put_block(self, block: bytes) -> None:
        self.queue.put((block, time.monotonic()))
        self.pipeline.metrics.queue_depth.set(self.queue.qsize())

    def put_backfill(self, comments: list[CommentAdded], changes: list[ChangeFact] | None = None,
                     close_gaps_up_to: int | None = None) -> Future[BatchResult]:
        from concurrent.futures import Future

        done: Future[BatchResult] = Future()
        self.queue.put(_Backfilled(comments, changes or [], done, close_gaps_up_to))
        return done

    def open_gap(self, reason: str, fallback_since: int) -> Future[tuple[int, int]]:
        """Open a gap after everything already queued (so after the blocks read before the fault): (id, since)."""
        from concurrent.futures import Future

        done: Future[tuple[int, int]] = Future()
        self.queue.put(_OpenGap(reason, fallback_since, done))
        return done

    def gap_failed(self, up_to: int, error: str) -> None:
        self.queue.put(_GapFailed(up_to, error))

    def reload(self, registry: Registry) -> Future[None]:
        from concurrent.futures import Future

        done: Future[None] = Future()
        self.queue.put(_Reload(registry, done))
        return done

    # ---------------------------------------------------------------------------------------- thread

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 4.0) -> bool:
        """Commit everything queued, then end the thread. False if it did not finish within ``timeout``."""
        self.queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            wait = self.flush_seconds if self._pending_since is not None else 1.0
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = _TICK
            self.pipeline.metrics.queue_depth.set(self.queue.qsize())
            if item is None:
                self._commit_stream(final=True)
                return
            if isinstance(item, tuple):  # a block of stream lines and when it was read
                block, read_at = item
                newest_before = max(self.pipeline.stream_newest or 0, self._pending.newest_event_time or 0) or None
                before = len(self._pending.verifications)
                dropped = self.pipeline.process_block(block, self._pending)
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
                    gap = self._open_gap("dropped-output", newest_before)
                    if self.on_dropped_output is not None:
                        self.on_dropped_output(gap[1] if gap else newest_before)
            elif isinstance(item, _Backfilled):
                self._commit_stream()
                batch = Pending()
                self.pipeline.process_comments(item.comments, batch, item.changes)
                result = self._commit(batch, "backfill", item.close_gaps_up_to)
                item.done.set_result(result)
            elif isinstance(item, _OpenGap):
                self._commit_stream()
                try:
                    opened = self._open_gap(item.reason, self.pipeline.stream_newest or item.fallback_since)
                except sqlite3.Error as exc:
                    item.done.set_exception(exc)
                else:
                    if opened is None:
                        item.done.set_exception(RuntimeError("no Gerrit server: no gap to open"))
                    else:
                        item.done.set_result(opened)
            elif isinstance(item, _GapFailed):
                if self.pipeline.server is not None:
                    self._retrying(functools.partial(self.pipeline.store.gap_failed, self.pipeline.server,
                                                     item.up_to, item.error))
            elif isinstance(item, _Reload):
                self._commit_stream()
                try:
                    self.pipeline.swap_registry(item.registry)
                except Exception as exc:  # keep the old registry; the caller reports it
                    item.done.set_exception(exc)
                else:
                    item.done.set_result(None)
            due = self._pending_since is not None and self.clock() - self._pending_since >= self.flush_seconds
            if len(self._pending.verifications) + len(self._pending.changes) >= self.batch_rows or due or (
                    self._pending.newest_event_time is not None and self.queue.empty()):
                self._commit_stream()
            self.last_progress = self.clock()

    def _commit_stream(self, final: bool = False) -> None:
        if self._pending.verifications or self._pending.newest_event_time is not None:
            self._commit(self._pending, "stream", final=final)
        self._pending_since = None

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
        """Run a write until it succeeds, waiting longer after each failure (never dropping it); with
        ``give_up`` (shutdown), stop after 5 failures and return what it gives."""
        delay = 0.1
        failures = 0
        while True:
            try:
                result = write()
                self.failing = False
                return result
            except sqlite3.Error as exc:
                failures += 1
                self.failing = True
                self.pipeline.metrics.db_write_errors.inc()
                log.error("db_write_failed", error=str(exc), rows=rows, retry_in=delay)
                if give_up is not None and failures >= 5:
                    return give_up()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _commit(self, pending: Pending, source: Source, close_gaps_up_to: int | None = None,
                final: bool = False) -> BatchResult:
        rows = len(pending.verifications)

        def abandon() -> BatchResult:
            log.error("db_write_abandoned_at_shutdown", rows=rows)
            return BatchResult(0, 0, 0)

        return self._retrying(functools.partial(self.pipeline.commit, pending, source, close_gaps_up_to),
                              rows=rows, give_up=abandon if final else None)

_TICK = b""
_T = TypeVar("_T")
