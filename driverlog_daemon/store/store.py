"""The writer's side of the database: the driver sync, batched idempotent writes, the cursor and the gaps.

Writes go through :class:`Store` on one connection, many rows per transaction; readers in other processes see
whole batches only (WAL). A verification is identified by its natural key
``(driver_id, change_number, patch_set, ci_account, comment_sha256)`` and inserted with ``INSERT OR IGNORE``, so
the same comment from the live stream, a backfill and a replay is one row. In the same transaction ``driver_status``
follows by trigger, and a batch's day counts, mark candidates, marks and mark history are written once for the
batch. A write that fails raises; the caller retries it (``writer.retrying``), so a batch is never dropped here.
"""

from __future__ import annotations

import functools
import json
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from driverlog_daemon.model import BackfillRun, ChangeFact, ImportStep, KeptComment, Source, Verification
from driverlog_daemon.parse.changes import ChangeRows
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import import_ledger, marks, reads, rejudge
from driverlog_daemon.store.schema import Transaction, connect, migrate, values_statements

if TYPE_CHECKING:
    from driverlog_daemon.config import WebhookConfig

WRITER_CACHE_KIB = 8192
class BatchResult(NamedTuple):
    inserted_success: int
    inserted_failure: int
    already_present: int
    closed_gaps: tuple[tuple[int, str, float], ...] = ()  # (id, reason, opened_at) of the gaps it closed
    transitions: int = 0  # mark transitions recorded (late data may also have moved or removed some)

    @property
    def inserted(self) -> int:
        return self.inserted_success + self.inserted_failure


#: A verification row's natural key in its unique index's order: driver, change, patch set, CI account, comment.
# A verification row is its Verification with the driver's id for its key, then when and how it arrived: the
# columns are named from the model's fields, so the two cannot drift apart.
_VERIFICATION_COLUMNS = ("driver_id", *Verification._fields[1:], "received_at", "source")
_NATURAL_KEY_ORDER = operator.itemgetter(*(_VERIFICATION_COLUMNS.index(c) for c in (
    "driver_id", "change_number", "patch_set", "ci_account", "comment_sha256")))

_INSERT_VERIFICATIONS = f"INSERT OR IGNORE INTO verifications ({', '.join(_VERIFICATION_COLUMNS)})"
# A kept comment's row: its KeptComment, then when and how it arrived; in its unique index's order
_KEPT_COLUMNS = (*KeptComment._fields, "received_at", "source")
_INSERT_KEPT = f"INSERT OR IGNORE INTO ci_comments ({', '.join(_KEPT_COLUMNS)})"


# Facts merge order-independently: a merge is final (MERGED wins, and the merged patch set is set once, as in
# Gerrit); otherwise the status of the newest fact wins (equal times: ABANDONED over NEW, a fixed order); patch
# set numbers and the last update only grow; the merge time is the earliest said (a query row gives an upper
# bound). SQLite's max()/min() of a NULL is NULL, hence coalesce(max(a, b), a, b).
_UPSERT_CHANGES = """
    INSERT INTO changes (change_number, project, branch, status, status_time, current_patch_set, merged_patch_set,
                         merged_time, last_update_time)"""
_UPSERT_CHANGES_TAIL = """
    ON CONFLICT (change_number) DO UPDATE SET
        status = CASE
            WHEN excluded.status IS NULL OR changes.status = 'MERGED' THEN changes.status
            WHEN excluded.status = 'MERGED' OR changes.status IS NULL THEN excluded.status
            WHEN (excluded.status_time, excluded.status = 'ABANDONED')
                 > (changes.status_time, changes.status = 'ABANDONED') THEN excluded.status
            ELSE changes.status END,
        status_time = CASE WHEN excluded.status IS NULL THEN changes.status_time
                           ELSE max(changes.status_time, excluded.status_time) END,
        current_patch_set = coalesce(max(changes.current_patch_set, excluded.current_patch_set),
                                     changes.current_patch_set, excluded.current_patch_set),
        merged_patch_set = coalesce(changes.merged_patch_set, excluded.merged_patch_set),
        merged_time = coalesce(min(changes.merged_time, excluded.merged_time), changes.merged_time,
                               excluded.merged_time),
        last_update_time = max(changes.last_update_time, excluded.last_update_time)"""


class Store:
    """The writer's handle on the database. One per process, used from one thread at a time."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
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
        #: the [[webhook]]s whose outbox the transitions fill (set by the daemon before its first batch)
        self.webhooks: tuple[WebhookConfig, ...] = ()
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

    # ------------------------------------------------------------------------------------ verifications

    def record(self, verifications: Iterable[Verification], source: Source,
               cursor: tuple[str, int] | None = None, changes: Iterable[ChangeFact] | ChangeRows = (),
               close: tuple[str, int, int | None] | None = None,
               backfill: tuple[str, BackfillRun] | None = None, kept: Sequence[KeptComment] = (),
               step: ImportStep | None = None, context: str | None = None) -> BatchResult:
        """Insert a batch in one transaction and advance the cursor; raises when the write fails (nothing of the
        batch is then written, and it may be given again).

        ``close`` = (server, gap id, newest stream event committed): the batch is a backfill that covered the
        open gaps up to that id; they close in the same transaction as its results.

        ``changes`` are merged into the change state in the same transaction; the marks and their history follow
        (:meth:`_update_transitions`).

        ``backfill`` = (server, what it asked of Gerrit): recorded in ``backfills`` with what it recovered (the
        results only it delivered), and named by the gaps it closes.

        ``kept``: the CI comments read, kept in ``ci_comments`` (:mod:`kept`). ``step``: the batch is a step of a
        history import, whose progress is written with it. ``context``: what the batch's new transitions are
        (:func:`marks.update_transitions`): None, ``registry``, or ``import`` (the first start's backfill and
        import: history before the first import's ``news_since``).
        """
        received_at = self._clock()
        merged = (changes if isinstance(changes, ChangeRows) else ChangeRows(changes)).rows
        # Rows go in in the order of the keys SQLite looks them up by: neighbours in a B-tree follow each other.
        # Equal keys keep their order (the first one stays).
        change_rows = [merged[n] for n in sorted(merged)]
        ids = self._driver_ids
        by_result: dict[str, list[tuple[Any, ...]]] = {"success": [], "failure": []}
        total = 0
        for v in verifications:
            total += 1
            by_result["success" if v.result == "success" else "failure"].append(
                (ids[v.driver_key], *v[1:], received_at, source))
        for rows in by_result.values():
            rows.sort(key=_NATURAL_KEY_ORDER)
        inserted = {"success": 0, "failure": 0}
        with self._transaction():
            first_new = int(self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM verifications").fetchone()[0])
            merging = [row[0] for row in change_rows if row[6] is not None]
            new_merged = "[]" if not merging else self.conn.execute(  # the changes new to the file that arrive merged
                """SELECT json_group_array(value) FROM json_each(?)
                   WHERE value NOT IN (SELECT change_number FROM changes)""", (json.dumps(merging),)).fetchone()[0]
            for sql, values in values_statements(_UPSERT_CHANGES, _UPSERT_CHANGES_TAIL, 9, change_rows):
                self.conn.execute(sql, values)
            if new_merged != "[]":
                marks.merged_candidates(self.conn, new_merged)
            for result, rows in by_result.items():
                for sql, values in values_statements(_INSERT_VERIFICATIONS, "", len(_VERIFICATION_COLUMNS), rows):
                    inserted[result] += max(self.conn.execute(sql, values).rowcount, 0)
            if inserted["success"] or inserted["failure"]:  # the batch's new rows (row ids only grow): set-wise
                for statement in marks.FOR_NEW_VERIFICATIONS:
                    self.conn.execute(statement, (first_new,))
            if kept:
                kept_rows = sorted((*k, received_at, source) for k in kept)
                for sql, values in values_statements(_INSERT_KEPT, "", len(_KEPT_COLUMNS), kept_rows):
                    self.conn.execute(sql, values)
            if cursor is not None:
                self._advance_cursor(*cursor)
            run_id = None
            if backfill is not None:
                recovered = inserted["success"] + inserted["failure"]
                run_id = self._record_backfill(*backfill, recovered, total - recovered)
            closed = self.close_gaps(*close, closed_by=run_id) if close is not None else []
            if step is not None:
                recovered = inserted["success"] + inserted["failure"]
                import_ledger.record_step(self.conn, step, recovered, total - recovered, self._clock())
            news_since = self._news_since() if context == "import" else None
            transitions = self._update_transitions(context=context, news_since=news_since)
        return BatchResult(inserted["success"], inserted["failure"],
                           total - inserted["success"] - inserted["failure"], tuple(closed), transitions)

    def _advance_cursor(self, server: str, event_time: int) -> None:
        """The stream committed events up to ``event_time``: that is proven, unless an open gap starts earlier."""
        now = self._clock()
        self.conn.execute(
            """INSERT INTO stream_state (server, last_event_time, newest_event_time, updated_at) VALUES (?1, ?2, ?2, ?3)
               ON CONFLICT (server) DO UPDATE SET
                   newest_event_time = max(coalesce(newest_event_time, 0), excluded.newest_event_time)""",
            (server, event_time, now))
        self._prove(server, event_time, now)

    def _prove(self, server: str, up_to: int, now: float) -> None:
        """Move the cursor to ``up_to``, but never across an open gap, and never back."""
        self.conn.execute(
            """UPDATE stream_state SET
                   last_event_time = max(last_event_time, min(?2, coalesce(
                       (SELECT min(since) FROM gaps WHERE server = ?1 AND closed_at IS NULL), ?2))),
                   updated_at = ?3
               WHERE server = ?1""", (server, up_to, now))

    def open_gap(self, server: str, since: int, reason: str) -> int:
        """Record a window whose CI results are not proven to be here (in its own transaction); its id."""
        with self._transaction():
            self.conn.execute(
                """INSERT INTO stream_state (server, last_event_time, newest_event_time, updated_at)
                   VALUES (?1, ?2, NULL, ?3) ON CONFLICT (server) DO NOTHING""", (server, since, self._clock()))
            cur = self.conn.execute("INSERT INTO gaps (server, since, reason, opened_at) VALUES (?, ?, ?, ?)",
                                    (server, since, reason, self._clock()))
            gap_id = int(cur.lastrowid or 0)
        return gap_id

    def _record_backfill(self, server: str, run: BackfillRun, recovered: int, already_present: int) -> int:
        cur = self.conn.execute(
            """INSERT INTO backfills (server, trigger, since, started_at, finished_at, queries, commands, repasses,
                                      changes_read, ci_messages, recovered, already_present, throttled_seconds,
                                      capped)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (server, run.trigger, run.since, run.started_at, self._clock(), run.queries, run.commands, run.repasses,
             run.changes_read, run.ci_messages, recovered, already_present, run.throttled_seconds, run.capped))
        return int(cur.lastrowid or 0)

    def close_gaps(self, server: str, up_to_id: int, stream_newest: int | None,
                   closed_by: int | None = None) -> list[tuple[int, str, float]]:
        """In the current transaction: close the open gaps with id <= ``up_to_id`` (a backfill covered them: its
        ``backfills`` id is ``closed_by``) and prove what the stream has committed since. Returns (id, reason,
        opened_at) of each gap closed."""
        now = self._clock()
        closed = [(int(i), str(r), float(o)) for i, r, o in self.conn.execute(
            "SELECT id, reason, opened_at FROM gaps WHERE server = ? AND closed_at IS NULL AND id <= ?",
            (server, up_to_id))]
        self.conn.execute("UPDATE gaps SET closed_at = ?, closed_by = ? "
                          "WHERE server = ? AND closed_at IS NULL AND id <= ?", (now, closed_by, server, up_to_id))
        if stream_newest is not None:
            self._prove(server, stream_newest, now)
        return closed

    def gap_failed(self, server: str, up_to_id: int, error: str) -> None:
        with self._transaction():
            self.conn.execute("UPDATE gaps SET attempts = attempts + 1, last_error = ? "
                              "WHERE server = ? AND closed_at IS NULL AND id <= ?", (error[:300], server, up_to_id))

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
