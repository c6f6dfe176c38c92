"""Count and commit: what every source's :class:`~driverlog_daemon.parse.scanner.Findings` become in the database.

Sources (live stream, backfill, replay file) get their findings from the pure step (``match.rules.examine``);
:class:`Pipeline` counts them (the stats every front end reports: replay's summary, the metrics, systemd's STATUS
line, the log) into a :class:`Pending` batch and commits batches through the
:class:`~driverlog_daemon.store.store.Store`. It holds the registry in force and swaps it on reload. The thread that
drives it is ``writer.Writer`` (live) or ``source.replay``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from driverlog_daemon.logs import get_logger
from driverlog_daemon.match.rules import examine, examine_messages, new_scanner
from driverlog_daemon.model import BackfillRun, ChangeFact, CommentAdded, KeptComment, Source, Verification
from driverlog_daemon.parse.bounds import in_range, in_time_range, unstorable
from driverlog_daemon.parse.changes import ChangeRows
from driverlog_daemon.parse.clock import SKEW_WARNING_SECONDS, GerritClock, last_stamp
from driverlog_daemon.parse.scanner import Findings, Scanner
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import reads
from driverlog_daemon.store.store import Batch, BatchResult, Store

if TYPE_CHECKING:  # imported when used: replay's start-up need not pay for it
    from driverlog_daemon.metrics import Metrics
    from driverlog_daemon.model import ImportStep
    from driverlog_daemon.store.registry_apply import Applied, HistorySettings

log = get_logger("driverlog.pipeline")

#: malformed lines of one reason logged one by one; past it, only now and then (with the count so far)
MALFORMED_LOGGED = 5

#: What sqlite3 raises for a value it cannot bind: an integer past 63 bits, a lone surrogate, a type it lacks.
_UNBINDABLE = (OverflowError, UnicodeEncodeError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


class _Unmeasured:
    """Metrics that measure nothing (any attribute, call or label of it is itself)."""

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


#: For a one-shot command (``replay``): it prints its own summary and serves no /metrics, so it need not import
#: prometheus_client at all.
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
    """Verifications matched and change facts read but not yet committed; for the stream's, the position they
    prove (``parse.clock``: its last block's credible time, Gerrit's clock), which the cursor moves to."""

    __slots__ = ("changes", "kept", "position", "read_at", "verifications")

    def __init__(self, changes: ChangeRows | None = None) -> None:
        self.verifications: list[Verification] = []
        self.kept: list[KeptComment] = []  # the CI comments read, as ci_comments keeps them
        self.changes = ChangeRows() if changes is None else changes  # merged by change as they come
        self.position: int | None = None
        self.read_at: list[tuple[float, int]] = []  # (monotonic time a block was read, its rows)


def warm_up(scanner: Scanner, registry: Registry) -> None:
    """Compile and import now what the first events would otherwise wait for."""
    scanner.warm_up()
    registry.compile_patterns()


class Pipeline:
    def __init__(self, registry: Registry, store: Store, *, metrics: Metrics | None = None,
                 server: str | None = None, clock: Callable[[], float] = time.time,
                 follow: Iterable[str] = (), on_followed_merge: Callable[[], None] | None = None) -> None:
        self.store = store
        #: projects whose merges ``on_followed_merge`` hears of (the registry's own repository: a new registry)
        self.follow, self.on_followed_merge = frozenset(follow), on_followed_merge
        if metrics is None:
            from driverlog_daemon.metrics import Metrics

            metrics = Metrics()
        self.metrics = metrics
        self.server = server  # the cursor key in stream_state; None: do not move any cursor (replay)
        #: Gerrit's clock as the stream shows it: which stamps may prove ground
        self.gerrit_clock = GerritClock(wall=clock)
        #: the position the live stream last committed (Gerrit's clock); a gap opened now starts there. After a
        #: restart, the stored cursor, but not past the daemon's clock when it was stored: it may hold a stamp far
        #: ahead that an earlier version trusted (what came after that moment is what the restart must read)
        stored = reads.cursor_stored(store.conn, server) if server else None
        self.stream_position = None if stored is None else min(stored[0], int(stored[1]))
        self._skewed = False
        self.stats = Stats()
        self._lock = threading.Lock()
        self.registry = registry
        self.scanner = new_scanner(registry, self.follow)
        self.store.sync_drivers(registry)
        self.metrics.registry_drivers.set(len(registry.drivers))
        self.metrics.registry_ci_accounts.set(len(registry.by_account))

    def warm_up(self) -> None:
        """For a live daemon: compile and import now what the first events would otherwise wait for."""
        with self._lock:
            scanner, registry = self.scanner, self.registry
        warm_up(scanner, registry)

    def swap_registry(self, registry: Registry, raw: bytes | None = None,
                      history: HistorySettings | None = None) -> Applied | None:
        """Use a new (already validated) registry from the next block on. First the drivers table follows it; with
        the bytes it was read from, it is applied to the file (:mod:`registry_apply`: a version, and with
        ``history`` the import it calls for)."""
        applied = self.apply_registry(registry, raw, history) if raw is not None else None
        if raw is None:
            self.store.sync_drivers(registry)
        scanner = new_scanner(registry, self.follow)
        warm_up(scanner, registry)
        with self._lock:
            self.registry, self.scanner = registry, scanner
        self.metrics.registry_drivers.set(len(registry.drivers))
        self.metrics.registry_ci_accounts.set(len(registry.by_account))
        return applied

    def apply_registry(self, registry: Registry, raw: bytes, history: HistorySettings | None) -> Applied:
        """Apply the registry in force (read from ``raw``) to the file: drivers, version, planned import."""
        from driverlog_daemon.store import registry_apply

        return registry_apply.apply(self.store, registry, raw, registry.source, history, time.time())

    # ----------------------------------------------------------------------------------------- examine

    def examine(self, block: bytes, start: int = 0, end: int | None = None) -> Findings:
        """``match.examine`` with the registry in force: the block's findings, nothing counted yet."""
        with self._lock:
            scanner, registry = self.scanner, self.registry
        return examine(scanner, registry, block, start, end)

    def examine_messages(self, comments: Iterable[CommentAdded], changes: Iterable[ChangeFact] = ()) -> Findings:
        """Backfill's entry: review messages already decoded into :class:`CommentAdded`, and change facts."""
        with self._lock:
            registry = self.registry
        return examine_messages(comments, changes, registry)

    def locate(self, block: bytes, read_at: float, into: Pending) -> None:
        """A stream block read at ``read_at`` (monotonic): the position it proves becomes ``into``'s (the latest
        block's, not the newest: see ``parse.clock``), and Gerrit's clock learns from it."""
        stamp = last_stamp(block)
        if stamp is None or not in_time_range(stamp):
            return
        clock = self.gerrit_clock
        into.position = clock.observe(stamp, read_at)
        offset = clock.offset()
        if offset is None:
            return
        self.metrics.gerrit_clock_offset.set(round(offset))
        skewed = abs(offset) > SKEW_WARNING_SECONDS
        if skewed != self._skewed:
            self._skewed = skewed
            log.warning("gerrit_clock_offset", offset_seconds=round(offset), skewed=skewed,
                        hint="Gerrit's clock and this host's differ: check NTP on both (the cursor follows "
                             "Gerrit's clock either way)" if skewed else None)
        if into.position < stamp:
            log.warning("event_stamp_ahead", stamp=stamp, counted_up_to=into.position)

    def absorb(self, findings: Findings, into: Pending) -> None:
        """Count what a block or a backfill yielded (stats, metrics, log) and add its results to ``into``."""
        stats = self.stats
        stats.lines += findings.lines
        stats.by_type.update(findings.by_type)
        self.metrics.count_events(findings.by_type)
        for bad in findings.malformed:
            stats.malformed[bad.reason] += 1
            self.metrics.malformed.labels(bad.reason).inc()
            n = stats.malformed[bad.reason]
            # the first few of a reason each, then now and then (a binary file is thousands of them)
            if n <= MALFORMED_LOGGED or (n & (n - 1) == 0 and n >= 1024) or n % 10_000 == 0:
                log.warning("malformed_line", reason=bad.reason, excerpt=bad.excerpt,
                            **({"so_far": n, "hint": "only some are logged; the metric counts them all"}
                               if n > MALFORMED_LOGGED else {}))
        stats.ci_comments += sum(findings.ci_comments.values())
        stats.unmatched_ci_comments.update(findings.unmatched)
        for account, n in findings.ci_comments.items():
            self.metrics.ci_comments.labels(account).inc(n)
        for account, n in findings.unmatched.items():
            self.metrics.ci_comments_unmatched.labels(account).inc(n)
        into.verifications.extend(findings.verifications)
        into.kept.extend(findings.kept)
        into.changes.merge(findings.changes)
        t = findings.newest_event_time
        if t is not None and (stats.newest_event_time is None or t > stats.newest_event_time):
            stats.newest_event_time = t
            self.metrics.last_event_time.set(t)
        if findings.dropped_output:
            self.metrics.dropped_output.inc(findings.dropped_output)
        if findings.followed_merges and self.on_followed_merge is not None:
            self.on_followed_merge()

    # ------------------------------------------------------------------------------------------ commit

    def _drop_unstorable(self, pending: Pending, cursor: tuple[str, int] | None) -> bool:
        """Drop from ``pending`` the rows sqlite3 cannot bind, each counted and logged as malformed
        (``unstorable:<why>``). True when something was dropped."""
        dropped = 0

        def storable(row: tuple[Any, ...], what: str) -> bool:
            nonlocal dropped
            reason = unstorable(row)
            if reason is None:
                return True
            dropped += 1
            self.stats.malformed[f"unstorable:{reason}"] += 1
            self.metrics.malformed.labels(f"unstorable:{reason}").inc()
            log.error("unstorable_row", kind=what, reason=reason, change=repr(row[0])[:40])
            return False

        pending.verifications = [v for v in pending.verifications if storable(v, "verification")]
        pending.kept = [k for k in pending.kept if storable(k, "ci_comment")]
        rows = pending.changes.rows
        for number in [n for n, row in rows.items() if not storable(row, "change")]:
            del rows[number]
        if cursor is not None and not in_range(cursor[1]):
            dropped += 1
            log.error("unstorable_row", kind="cursor", reason="out_of_range")
            pending.position = None
        return dropped > 0

    def commit(self, pending: Pending, source: Source, close_gaps_up_to: int | None = None,
               backfill: BackfillRun | None = None, *, step: ImportStep | None = None,
               context: str | None = None) -> BatchResult:
        """Write a batch in one transaction, with the cursor when this pipeline has a server; a backfill batch
        closes the gaps it covered (ids up to ``close_gaps_up_to``) and records what it asked of Gerrit
        (``backfill``) in the same transaction; a history import's batch its ``step``. ``context``: see
        ``store.Batch`` (the first start's backfill is history, like the import)."""
        if backfill is not None and backfill.history:
            context = "import"
        cursor = close = None
        if self.server is not None and pending.position is not None and source == "stream":
            cursor = (self.server, pending.position)
        if self.server is not None and close_gaps_up_to is not None:
            close = (self.server, close_gaps_up_to, self.stream_position)
        ran = (self.server, backfill) if self.server is not None and backfill is not None else None

        def batch() -> Batch:
            return Batch(source, pending.verifications, pending.kept, pending.changes, cursor, close, ran, step,
                         context)

        try:
            result = self.store.commit(batch())
        except _UNBINDABLE:  # parse refuses such values; should one pass, it costs its row, never the writer
            if not self._drop_unstorable(pending, cursor):
                raise
            if cursor is not None and pending.position is None:
                cursor = None
            result = self.store.commit(batch())
        if cursor is not None:  # the latest, not the newest: after a step back of Gerrit's clock, it is older
            self.stream_position = cursor[1]
        for gap_id, reason, opened_at in result.closed_gaps:
            log.info("gap_closed", server=self.server, gap=gap_id, reason=reason,
                     open_seconds=round(time.time() - opened_at, 3), recorded=result.inserted)
        self.stats.recorded += result.inserted
        self.stats.already_present += result.already_present
        self.metrics.batch_rows.observe(len(pending.verifications))
        for kind, n in (("success", result.inserted_success), ("failure", result.inserted_failure)):
            if n:
                self.metrics.verifications.labels(source, kind).inc(n)
        if result.inserted:
            newest = max(v.comment_time for v in pending.verifications)
            if self.stats.last_verification_time is None or newest > self.stats.last_verification_time:
                self.stats.last_verification_time = newest
                self.metrics.last_verification_time.set(newest)
        if result.already_present:
            self.metrics.duplicates.labels(source).inc(result.already_present)
        if result.transitions:
            self.metrics.mark_transitions.inc(result.transitions)
        committed = time.monotonic()
        for read_at, rows in pending.read_at:  # line read -> row committed, per verification
            for _ in range(rows):
                self.metrics.ingest_latency.observe(committed - read_at)
        pending.read_at = []
        pending.verifications = []
        pending.kept = []
        pending.changes = ChangeRows()
        pending.position = None
        return result
