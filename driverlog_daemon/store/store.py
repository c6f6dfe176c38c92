"""The writer's side of the database: the driver sync, the unit of work (:class:`Batch`), the gaps, re-judging.

Writes go through :class:`Store` on one connection, a :class:`Batch` a transaction (``commit``); readers in other
processes see whole batches only (WAL). A verification is identified by its natural key
``(driver_id, change_number, patch_set, ci_account, comment_sha256)`` and inserted with ``INSERT OR IGNORE``, so
the same comment from the live stream, a backfill and a replay is one row. In the same transaction ``driver_status``
follows by trigger, and a batch's day counts, mark candidates, marks and mark history are written once for the
batch. A write that fails raises; the caller retries it (``writer.retrying``), so a batch is never dropped here.
Each table's write is ``tables``'s; the mark's and its history's, ``marks``'s.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from driverlog_daemon.model import BackfillRun, ChangeFact, ImportStep, KeptComment, Source, Verification
from driverlog_daemon.parse.changes import ChangeRows
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import import_ledger, marks, outbox, reads, rejudge, tables
from driverlog_daemon.store.schema import Transaction, connect, migrate

if TYPE_CHECKING:
    from driverlog_daemon.config import WebhookConfig

WRITER_CACHE_KIB = 8192


class Batch(NamedTuple):
    """One unit of work: what a transaction writes, and what it means.

    ``cursor`` = (server, newest event time): a stream batch proves what its events cover. ``close_gaps`` =
    (server, gap id, newest stream event committed): a backfill covered the open gaps up to that id, which close
    with its results. ``backfill`` = (server, what it asked of Gerrit): its line in ``backfills``, with what only
    it delivered. ``step``: a history import's step, whose progress is written with it. ``context``: what the
    batch's new transitions are (:func:`marks.update_transitions`): None (news), ``registry``, or ``import``
    (the first start's backfill and import: history before the first import's ``news_since``)."""

    source: Source
    verifications: Sequence[Verification] = ()
    kept: Sequence[KeptComment] = ()
    changes: Iterable[ChangeFact] | ChangeRows = ()
    cursor: tuple[str, int] | None = None
    close_gaps: tuple[str, int, int | None] | None = None
    backfill: tuple[str, BackfillRun] | None = None
    step: ImportStep | None = None
    context: str | None = None


class BatchResult(NamedTuple):
    inserted_success: int
    inserted_failure: int
    already_present: int
    closed_gaps: tuple[tuple[int, str, float], ...] = ()  # (id, reason, opened_at) of the gaps it closed
    transitions: int = 0  # mark transitions recorded (late data may also have moved or removed some)

    @property
    def inserted(self) -> int:
        return self.inserted_success + self.inserted_failure


class Store:
    """The writer's handle on the database. One per process, used from one thread at a time. ``webhooks``: the
    ``[[webhook]]``s whose outbox the transitions fill."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 webhooks: Sequence[WebhookConfig] = ()) -> None:
        self.path = str(path)
        self._clock = clock
        self.webhooks = tuple(webhooks)
        self.conn = connect(path)
        # A larger page cache than SQLite's 2 MiB keeps the unique index of verifications in memory far longer
        # as the file grows (docs/performance.md).
        self.conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        try:
            migrate(self.conn, self.path)
        except BaseException:
            self.conn.close()
            raise
        self._driver_ids = self._load_driver_ids()
        with self._transaction():  # a file just upgraded (or a batch cut short) leaves pairs to compute
            self._update_transitions(context="import")  # history (recomputed on upgrade), not news

    @functools.cached_property
    def db(self) -> Any:
        """The connection as a ``sqlite_utils.Database`` (imported on first use)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def checkpoints_every(self, pages: int) -> Iterator[None]:
        """Move the WAL into the database file only every ``pages`` pages while in the block (a bulk import).

        SQLite's default (1,000 pages) checkpoints after nearly every replay batch once the indexes are large,
        copying the same pages over and over. The WAL may grow to ``pages`` pages meanwhile; the previous setting
        is back afterwards.
        """
        previous = int(self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {previous}")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ drivers

    def _load_driver_ids(self) -> dict[tuple[str, str, str], int]:
        """(project_id, vendor, name) -> drivers.id, removed drivers included."""
        return {(p, v, n): i for i, p, v, n in self.conn.execute("SELECT id, project_id, vendor, name FROM drivers")}

    def sync_drivers(self, registry: Registry) -> Mapping[tuple[str, str, str], int]:
        """Make ``drivers`` match the registry: insert new, update changed, mark the missing as removed."""
        with self._transaction():
            return self.sync_in_transaction(registry)

    def sync_in_transaction(self, registry: Registry) -> Mapping[tuple[str, str, str], int]:
        """:meth:`sync_drivers` in the caller's transaction."""
        now = self._clock()
        present = set()
        # Only the rows that differ are written: a start with an unchanged registry writes none.
        stored = {(p, v, n): rest for p, v, n, *rest in self.conn.execute(
            "SELECT project_id, vendor, name, review_project, ci_account, success_pattern, failure_pattern, "
            "description, wiki, releases, removed_at FROM drivers")}
        for d in registry.drivers:
            present.add(d.key)
            row = {
                "review_project": d.review_project,
                "ci_account": d.ci.account if d.ci else None,
                "success_pattern": d.ci.success_pattern if d.ci else None,
                "failure_pattern": d.ci.failure_pattern if d.ci else None,
                "description": d.description,
                "wiki": d.wiki,
                "releases": json.dumps(list(d.releases)),
            }
            if stored.get(d.key) == [*row.values(), None]:  # the same, and not removed
                continue
            self.conn.execute(
                """INSERT INTO drivers (project_id, vendor, name, review_project, ci_account, success_pattern,
                                        failure_pattern, description, wiki, releases, first_seen_at, updated_at)
                   VALUES (:project_id, :vendor, :name, :review_project, :ci_account, :success_pattern,
                           :failure_pattern, :description, :wiki, :releases, :now, :now)
                   ON CONFLICT (project_id, vendor, name) DO UPDATE SET
                       review_project = excluded.review_project, ci_account = excluded.ci_account,
                       success_pattern = excluded.success_pattern, failure_pattern = excluded.failure_pattern,
                       description = excluded.description, wiki = excluded.wiki, releases = excluded.releases,
                       removed_at = NULL, updated_at = :now
                   WHERE (review_project, ci_account, success_pattern, failure_pattern, description, wiki,
                          releases, removed_at)
                      IS NOT (excluded.review_project, excluded.ci_account, excluded.success_pattern,
                              excluded.failure_pattern, excluded.description, excluded.wiki,
                              excluded.releases, NULL)""",
                {"project_id": d.project_id, "vendor": d.vendor, "name": d.name, "now": now, **row},
            )
        ids = self._load_driver_ids()
        gone = [ids[key] for key in ids if key not in present]
        self.conn.executemany(
            "UPDATE drivers SET removed_at = ?, updated_at = ? WHERE id = ? AND removed_at IS NULL",
            [(now, now, i) for i in gone],
        )
        self._driver_ids = ids
        return dict(ids)

    # ----------------------------------------------------------------------------------------- commit

    def commit(self, batch: Batch) -> BatchResult:
        """Write a batch in one transaction; raises when the write fails (nothing of it is then written, and it may
        be given again)."""
        received_at = self._clock()
        merged = (batch.changes if isinstance(batch.changes, ChangeRows) else ChangeRows(batch.changes)).rows
        change_rows = [merged[n] for n in sorted(merged)]  # in key order; equal keys keep theirs (the first stays)
        ids = self._driver_ids
        by_result: dict[str, list[tuple[Any, ...]]] = {"success": [], "failure": []}
        for v in batch.verifications:
            by_result["success" if v.result == "success" else "failure"].append(
                (ids[v.driver_key], *v[1:], received_at, batch.source))
        for rows in by_result.values():
            rows.sort(key=tables.NATURAL_KEY_ORDER)
        total = len(by_result["success"]) + len(by_result["failure"])
        kept = sorted((*k, received_at, batch.source) for k in batch.kept)
        with self._transaction():
            tables.changes(self.conn, change_rows)
            inserted = tables.verifications(self.conn, by_result)
            tables.kept(self.conn, kept)
            now = self._clock()
            if batch.cursor is not None:
                tables.advance_cursor(self.conn, *batch.cursor, now)
            recovered = inserted["success"] + inserted["failure"]
            run_id = None if batch.backfill is None else tables.backfill(
                self.conn, *batch.backfill, recovered, total - recovered, now)
            closed = [] if batch.close_gaps is None else tables.close_gaps(
                self.conn, *batch.close_gaps, closed_by=run_id, now=now)
            if batch.step is not None:
                import_ledger.record_step(self.conn, batch.step, recovered, total - recovered, now)
            news_since = self._news_since() if batch.context == "import" else None
            transitions = self._update_transitions(context=batch.context, news_since=news_since)
        return BatchResult(inserted["success"], inserted["failure"], total - recovered, tuple(closed), transitions)

    def open_gap(self, server: str, since: int, reason: str) -> int:
        """Record a window whose CI results are not proven to be here (in its own transaction); its id."""
        with self._transaction():
            return tables.open_gap(self.conn, server, since, reason, self._clock())

    def gap_failed(self, server: str, up_to_id: int, error: str) -> None:
        with self._transaction():
            tables.gap_failed(self.conn, server, up_to_id, error)

    def _update_transitions(self, *, context: str | None = None, news_since: int | None = None) -> int:
        """In the current transaction: the mark history of the pairs the batch touched (:mod:`marks`)."""
        return marks.update_transitions(self.conn, hooks=self.webhooks,
                                        keys={i: k for k, i in self._driver_ids.items()}, now=self._clock(),
                                        context=context, news_since=news_since)

    def _news_since(self) -> int | None:
        """In the current transaction: Gerrit's time from which what the first start's import and backfill find is
        news (:data:`import_ledger.NEWS_MARGIN` before it was planned). None: no first import."""
        row = self.conn.execute("SELECT news_since FROM imports WHERE kind = 'first' ORDER BY id LIMIT 1").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # ------------------------------------------------------------------------------------- history

    def rejudge(self, driver_id: int, registry: Registry, step: ImportStep) -> rejudge.Rejudged:
        """A registry change reaching the past, for one driver (:mod:`rejudge`), in one transaction with its new
        mark history (cause ``registry``, delivered) and the step of the import it belongs to."""
        key = next((k for k, i in self._driver_ids.items() if i == driver_id), None)
        now = self._clock()
        with self._transaction():
            rejudge.clear_derived(self.conn, driver_id)
            done = rejudge.Rejudged(0, 0, 0)
            if key is not None:
                done = rejudge.verdicts(self.conn, driver_id, key, registry, now)
                remapped = rejudge.releases(self.conn, driver_id, registry)  # the verdicts of files before v7
                done = done._replace(changed=done.changed + remapped.changed)
            rejudge.derive(self.conn, driver_id)
            import_ledger.record_step(self.conn, step._replace(rejudged=done.total), 0, 0, now)
            self._update_transitions(context="registry")
        return done

    def record_delivery(self, outcome: outbox.DeliveryOutcome) -> None:
        """A webhook delivery's outcome, reported by its delivery thread."""
        with self._transaction():
            outbox.record(self.conn, outcome)

    def import_failed(self, import_id: int, error: str) -> None:
        with self._transaction():
            import_ledger.step_failed(self.conn, import_id, error)

    def transaction(self) -> Transaction:
        """One transaction of the writer's (for the registry's application, :mod:`registry_apply`)."""
        return self._transaction()

    @property
    def driver_ids(self) -> Mapping[tuple[str, str, str], int]:
        return dict(self._driver_ids)

    def cursor(self, server: str) -> int | None:
        """The proven cursor, as this connection sees it (``reads.cursor``)."""
        return reads.cursor(self.conn, server)

    def _transaction(self) -> Transaction:
        return Transaction(self.conn)
