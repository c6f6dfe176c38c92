"""The pipeline shared by every source: block of lines -> scan -> match -> batch -> store.

Sources (live stream, backfill, replay file) hand over blocks of complete lines (or, for backfill, review
messages already decoded); :class:`Pipeline` turns them into verifications and commits them in batches,
keeping the counters every front end reports (replay's summary, the metrics, systemd's STATUS line).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from driverlog_daemon.events import Malformed, Scanner
from driverlog_daemon.match import match_comment
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.model import CommentAdded, Source, Verification
from driverlog_daemon.registry import Registry
from driverlog_daemon.store import BatchResult, Store

log = structlog.get_logger("driverlog.pipeline")


@dataclass(slots=True)
class Stats:
    lines: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    ci_comments: int = 0
    unmatched_ci_comments: Counter[str] = field(default_factory=Counter)
    matched: int = 0
    recorded: int = 0
    already_present: int = 0
    newest_event_time: int | None = None
    last_verification_time: int | None = None


@dataclass(slots=True)
class Pending:
    """Verifications matched but not yet committed, with the newest event time they cover."""

    verifications: list[Verification] = field(default_factory=list)
    newest_event_time: int | None = None


class Pipeline:
    def __init__(self, registry: Registry, store: Store, *, metrics: Metrics | None = None,
                 server: str | None = None) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.server = server  # the cursor key in stream_state; None: do not move any cursor (replay)
        self.stats = Stats()
        self._lock = threading.Lock()
        self.registry = registry
        self.scanner = Scanner(registry.ci_accounts)
        self.store.sync_drivers(registry)
        self.metrics.registry_drivers.set(len(registry.drivers))
        self.metrics.registry_ci_accounts.set(len(registry.by_account))

    def swap_registry(self, registry: Registry) -> None:
        """Use a new (already validated) registry from the next block on; sync the drivers table first."""
        self.store.sync_drivers(registry)
        scanner = Scanner(registry.ci_accounts)
        with self._lock:
            self.registry, self.scanner = registry, scanner
        self.metrics.registry_drivers.set(len(registry.drivers))
        self.metrics.registry_ci_accounts.set(len(registry.by_account))

    # ----------------------------------------------------------------------------------------- process

    def process_block(self, block: bytes, into: Pending) -> int:
        """Scan a block of complete lines, match its CI comments, add results to ``into``.

        Returns how many ``dropped-output`` events the block held (the caller triggers a backfill).
        """
        with self._lock:
            scanner, registry = self.scanner, self.registry
        scan = scanner.scan(block)
        stats = self.stats
        stats.lines += scan.lines
        stats.by_type.update(scan.by_type)
        self.metrics.count_events(scan.by_type)
        for bad in scan.malformed:
            self._malformed(bad)
        self._match(scan.comments, registry, into)
        if scan.newest_event_time is not None:
            self._note_time(scan.newest_event_time, into)
        if scan.dropped_output:
            self.metrics.dropped_output.inc(scan.dropped_output)
        return scan.dropped_output

    def process_comments(self, comments: Iterable[CommentAdded], into: Pending) -> None:
        """Backfill's entry: review messages already decoded into :class:`CommentAdded`."""
        with self._lock:
            registry = self.registry
        self._match(comments, registry, into)

    def _match(self, comments: Iterable[CommentAdded], registry: Registry, into: Pending) -> None:
        for comment in comments:
            outcome = match_comment(comment, registry)
            if not outcome.is_ci_comment:
                continue
            account = comment.author.username or ""
            self.stats.ci_comments += 1
            self.metrics.ci_comments.labels(account).inc()
            if outcome.verifications:
                into.verifications.extend(outcome.verifications)
                self.stats.matched += len(outcome.verifications)
            else:
                self.stats.unmatched_ci_comments[account] += 1
                self.metrics.ci_comments_unmatched.labels(account).inc()

    def _note_time(self, t: int, into: Pending) -> None:
        if into.newest_event_time is None or t > into.newest_event_time:
            into.newest_event_time = t
        if self.stats.newest_event_time is None or t > self.stats.newest_event_time:
            self.stats.newest_event_time = t
            self.metrics.last_event_time.set(t)

    def _malformed(self, bad: Malformed) -> None:
        self.stats.malformed[bad.reason] += 1
        self.metrics.malformed.labels(bad.reason).inc()
        log.warning("malformed_line", reason=bad.reason, excerpt=bad.excerpt)

    # ------------------------------------------------------------------------------------------ commit

    def commit(self, pending: Pending, source: Source) -> BatchResult:
        """Write a batch in one transaction, with the cursor when this pipeline has a server."""
        cursor = None
        if self.server is not None and pending.newest_event_time is not None and source == "stream":
            cursor = (self.server, pending.newest_event_time)
        retries_before = self.store.write_retries
        result = self.store.record(pending.verifications, source, cursor)
        if self.store.write_retries != retries_before:
            self.metrics.db_write_retries.inc(self.store.write_retries - retries_before)
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
        pending.verifications = []
        pending.newest_event_time = None
        return result
