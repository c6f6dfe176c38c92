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
import itertools
import json
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from driverlog_daemon import health, reads, webhooks
from driverlog_daemon.changes import ChangeRows
from driverlog_daemon.health import Candidate
from driverlog_daemon.model import BackfillRun, ChangeFact, Source, Verification
from driverlog_daemon.registry import Registry
from driverlog_daemon.schema import Transaction, connect, migrate

if TYPE_CHECKING:
    from driverlog_daemon.config import WebhookConfig

WRITER_CACHE_KIB = 8192
# A Candidate's columns, of the table named {t}
_CANDIDATE_COLUMNS = ", ".join("{t}." + c for c in Candidate._fields)


class BatchResult(NamedTuple):
    inserted_success: int
    inserted_failure: int
    already_present: int
    closed_gaps: tuple[tuple[int, str, float], ...] = ()  # (id, reason, opened_at) of the gaps it closed
    transitions: int = 0  # mark transitions recorded (late data may also have moved or removed some)

    @property
    def inserted(self) -> int:
        return self.inserted_success + self.inserted_failure


# Rows go in as multi-row VALUES statements of 256 rows (the rest in 128, 64, …, 1): SQLite inserts them in one
# call, where executemany would release and retake the GIL around every row and, beside a busy thread (replay's),
# wait for it each time. Fixed sizes keep the prepared statements few and reused (sqlite3 caches them by text;
# one for every batch size would hold megabytes of programs).
_ROWS_PER_STATEMENT = 256


def _values_statements(head: str, tail: str, width: int,
                       rows: Sequence[Sequence[Any]]) -> Iterator[tuple[str, list[Any]]]:
    """``head VALUES (?, …), (?, …) tail`` statements with their parameters, for ``rows`` of ``width`` values."""
    at, size = 0, _ROWS_PER_STATEMENT
    while at < len(rows):
        while size > len(rows) - at:
            size //= 2
        chunk = rows[at:at + size]
        at += size
        yield _values_sql(head, tail, width, size), list(itertools.chain.from_iterable(chunk))


@functools.cache
def _values_sql(head: str, tail: str, width: int, size: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([one] * size)} {tail}"


#: A verification row's natural key in its unique index's order: driver, change, patch set, CI account, comment.
# A verification row is its Verification with the driver's id for its key, then when and how it arrived: the
# columns are named from the model's fields, so the two cannot drift apart.
_VERIFICATION_COLUMNS = ("driver_id", *Verification._fields[1:], "received_at", "source")
# What a batch's new verifications (row id >= ?) add beyond their rows, once per batch rather than a trigger per row:
# their day counts; their candidacy for a mark when their change has merged at their patch set; and the pairs whose
# mark history must be computed again (schema: mark_candidates, marks_dirty, driver_days).
_FOR_NEW_VERIFICATIONS = (
    """INSERT INTO driver_days (driver_id, day, runs, passes)
       SELECT driver_id, comment_time / 86400, count(*), sum(result = 'success') FROM verifications WHERE id >= ?
       GROUP BY driver_id, comment_time / 86400
       ON CONFLICT (driver_id, day) DO UPDATE SET runs = runs + excluded.runs, passes = passes + excluded.passes""",
    """INSERT INTO mark_candidates (verification_id, driver_id, release, effective_time, comment_time, result,
                                    change_number, patch_set, comment_sha256)
       SELECT v.id, v.driver_id, v.release, max(v.comment_time, coalesce(c.merged_time, v.comment_time)),
              v.comment_time, v.result, v.change_number, v.patch_set, v.comment_sha256
       FROM verifications v JOIN changes c ON c.change_number = v.change_number AND c.merged_patch_set = v.patch_set
       WHERE v.id >= ?1 AND v.release != ''
       ON CONFLICT (verification_id) DO NOTHING""",
    """INSERT INTO marks_dirty (driver_id, release, since)
       SELECT driver_id, release, min(effective_time) FROM mark_candidates WHERE verification_id >= ?
       GROUP BY driver_id, release
       ON CONFLICT (driver_id, release) DO UPDATE SET since = min(since, excluded.since)""",
)

_UPSERT_MARK = """
    INSERT INTO driver_marks (driver_id, release, verification_id, result, comment_time, change_number, patch_set,
                              comment_sha256)"""
_UPSERT_MARK_TAIL = """
    ON CONFLICT (driver_id, release) DO UPDATE SET
        verification_id = excluded.verification_id, result = excluded.result, comment_time = excluded.comment_time,
        change_number = excluded.change_number, patch_set = excluded.patch_set, comment_sha256 = excluded.comment_sha256
    WHERE (excluded.comment_time, excluded.change_number, excluded.patch_set, excluded.comment_sha256)
        > (driver_marks.comment_time, driver_marks.change_number, driver_marks.patch_set,
           driver_marks.comment_sha256)"""

_NATURAL_KEY_ORDER = operator.itemgetter(*(_VERIFICATION_COLUMNS.index(c) for c in (
    "driver_id", "change_number", "patch_set", "ci_account", "comment_sha256")))

_INSERT_VERIFICATIONS = f"INSERT OR IGNORE INTO verifications ({', '.join(_VERIFICATION_COLUMNS)})"


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
            self._update_transitions()

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
        now = self._clock()
        present = set()
        with self._transaction():
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
               backfill: tuple[str, BackfillRun] | None = None) -> BatchResult:
        """Insert a batch in one transaction and advance the cursor; raises when the write fails (nothing of the
        batch is then written, and it may be given again).

        ``close`` = (server, gap id, newest stream event committed): the batch is a backfill that covered the
        open gaps up to that id; they close in the same transaction as its results.

        ``changes`` are merged into the change state in the same transaction; the marks and their history follow
        (:meth:`_update_transitions`).

        ``backfill`` = (server, what it asked of Gerrit): recorded in ``backfills`` with what it recovered (the
        results only it delivered), and named by the gaps it closes.
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
            for sql, values in _values_statements(_UPSERT_CHANGES, _UPSERT_CHANGES_TAIL, 9, change_rows):
                self.conn.execute(sql, values)
            if new_merged != "[]":
                self._merged_candidates(new_merged)
            for result, rows in by_result.items():
                for sql, values in _values_statements(_INSERT_VERIFICATIONS, "", len(_VERIFICATION_COLUMNS), rows):
                    inserted[result] += max(self.conn.execute(sql, values).rowcount, 0)
            if inserted["success"] or inserted["failure"]:  # the batch's new rows (row ids only grow): set-wise
                for statement in _FOR_NEW_VERIFICATIONS:
                    self.conn.execute(statement, (first_new,))
            if cursor is not None:
                self._advance_cursor(*cursor)
            run_id = None
            if backfill is not None:
                recovered = inserted["success"] + inserted["failure"]
                run_id = self._record_backfill(*backfill, recovered, total - recovered)
            closed = self.close_gaps(*close, closed_by=run_id) if close is not None else []
            transitions = self._update_transitions()
        return BatchResult(inserted["success"], inserted["failure"],
                           total - inserted["success"] - inserted["failure"], tuple(closed), transitions)

    def _merged_candidates(self, numbers: str) -> None:
        """In the current transaction: the verifications at the merged patch set of these changes (the batch's
        merged ones new to the file; a known change's merge is the update trigger's) that are not candidates yet
        become candidates, and their pairs' history is due from them. ``numbers``: a JSON array (SQLite reads it
        as it is: no list of them is held here).

        Most merged changes have no verification: each costs one probe of the verifications index, in that order
        (CROSS JOIN), rather than a change lookup first."""
        made = self.conn.execute(
            """INSERT INTO mark_candidates (verification_id, driver_id, release, effective_time, comment_time, result,
                                            change_number, patch_set, comment_sha256)
               SELECT v.id, v.driver_id, v.release, max(v.comment_time, coalesce(c.merged_time, v.comment_time)),
                      v.comment_time, v.result, v.change_number, v.patch_set, v.comment_sha256
               FROM json_each(?) m CROSS JOIN verifications v ON v.change_number = m.value
                    CROSS JOIN changes c ON c.change_number = v.change_number AND c.merged_patch_set = v.patch_set
               WHERE v.release != ''
               ON CONFLICT (verification_id) DO NOTHING
               RETURNING driver_id, release, effective_time""", (numbers,))
        since: dict[tuple[int, str], int] = {}
        for driver_id, release, effective_time in made:
            pair = (driver_id, release)
            since[pair] = min(since.get(pair, effective_time), effective_time)
        self.conn.executemany(
            """INSERT INTO marks_dirty (driver_id, release, since) VALUES (?, ?, ?)
               ON CONFLICT (driver_id, release) DO UPDATE SET since = min(since, excluded.since)""",
            [(d, r, t) for (d, r), t in since.items()])

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

    def _update_transitions(self) -> int:
        """In the current transaction: the mark history of every pair the batch touched (``marks_dirty``, from
        the earliest effective time that changed), so that ``mark_transitions`` equals the definition over the
        data; returns how many transitions are new.

        A few statements for all the pairs at once, not a few per pair (a batch touches hundreds of pairs); the
        candidates are read pair after pair, never all held at once, each pair's as one row (a JSON array): every
        row a cursor yields hands the GIL over, which beside replay's scanning thread costs far more than the row.
        The best candidate before ``since`` is usually the pair's mark itself (the best of the candidates there were,
        all earlier than ``since`` when the data comes in time order): only when it is not are the earlier
        candidates searched."""
        dirty = self.conn.execute("SELECT driver_id, release, since FROM marks_dirty").fetchall()
        if not dirty:
            return 0
        before = {(driver_id, release): Candidate(*candidate) for driver_id, release, *candidate in self.conn.execute(
            f"""SELECT d.driver_id, d.release, {_CANDIDATE_COLUMNS.format(t="m")}
                FROM marks_dirty d LEFT JOIN driver_marks k ON k.driver_id = d.driver_id AND k.release = d.release
                JOIN mark_candidates m ON m.verification_id = CASE
                    WHEN (SELECT effective_time FROM mark_candidates WHERE verification_id = k.verification_id)
                         < d.since THEN k.verification_id
                    ELSE (SELECT verification_id FROM mark_candidates
                          WHERE driver_id = d.driver_id AND release = d.release AND effective_time < d.since
                          ORDER BY comment_time DESC, change_number DESC, patch_set DESC, comment_sha256 DESC
                          LIMIT 1) END""")}
        present = {(driver_id, release): set(json.loads(ids)) for driver_id, release, ids in self.conn.execute(
            """SELECT d.driver_id, d.release, json_group_array(t.id) FROM marks_dirty d JOIN mark_transitions t
               ON t.driver_id = d.driver_id AND t.release = d.release AND t.at >= d.since
               GROUP BY d.driver_id, d.release""")}
        marks: list[tuple[Any, ...]] = []
        gone: list[str] = []
        new: list[health.Transition] = []

        def history(pair: tuple[int, str], since_then: list[Candidate]) -> None:
            earlier = before.get(pair)
            wanted = {t.id: t for t in health.transitions(*pair, since_then, earlier)}
            best = max((c for c in (earlier, *since_then) if c is not None), key=lambda c: c.rank, default=None)
            if best is not None:  # today's mark: the best of every candidate (all are eligible now)
                marks.append((*pair, best.verification_id, best.result, best.comment_time, best.change_number,
                              best.patch_set, best.comment_sha256))
            had = present.get(pair, set())
            gone.extend(had - wanted.keys())
            new.extend(sorted((wanted[i] for i in wanted.keys() - had), key=lambda t: (t.at, t.id)))

        later = self.conn.execute(
            f"""SELECT d.driver_id, d.release, json_group_array(json_array({_CANDIDATE_COLUMNS.format(t="m")}))
                FROM marks_dirty d JOIN mark_candidates m
                     ON m.driver_id = d.driver_id AND m.release = d.release AND m.effective_time >= d.since
                GROUP BY d.driver_id, d.release""")
        seen = set()
        for driver_id, release, candidates in later:
            seen.add((driver_id, release))
            history((driver_id, release), sorted(map(Candidate._make, json.loads(candidates))))
        for driver_id, release, _ in dirty:
            if (driver_id, release) not in seen:  # no candidate since: only what came before
                history((driver_id, release), [])
        # multi-row statements, not executemany: one GIL hand-over a statement, not one a row
        for sql, values in _values_statements(_UPSERT_MARK, _UPSERT_MARK_TAIL, 8, marks):
            self.conn.execute(sql, values)
        if gone and self.webhooks:  # before they go: a retraction carries the transition it withdraws
            self._queue_deliveries("retraction", [t for t in map(health.Transition._make, self.conn.execute(
                f"SELECT * FROM mark_transitions WHERE id IN ({', '.join('?' * len(gone))})", sorted(gone)))])
        if gone:
            self.conn.executemany("DELETE FROM mark_transitions WHERE id = ?", [(i,) for i in gone])
        for sql, values in _values_statements("INSERT INTO mark_transitions", "", 10, new):
            self.conn.execute(sql, values)
        if new and self.webhooks:
            self._queue_deliveries("transition", new)
        self.conn.execute("DELETE FROM marks_dirty")
        return len(new)

    def _queue_deliveries(self, kind: str, transitions: list[health.Transition]) -> None:
        """In the current transaction: one outbox row per transition and webhook whose filters pass it."""
        keys = {i: k for k, i in self._driver_ids.items()}
        now = self._clock()
        rows = []
        for t in transitions:
            key = keys.get(t.driver_id)
            if key is None:
                continue
            review_url = self.conn.execute("SELECT review_url FROM verifications WHERE id = ?",
                                           (t.verification_id,)).fetchone()
            body = webhooks.payload(kind, t, key, review_url[0] if review_url else None)
            for hook in self.webhooks:
                if webhooks.passes(hook, t.driver_id, key, t.release):
                    rows.append((hook.name, kind, t.id, t.driver_id, t.release, t.at, body, now, now))
        self.conn.executemany(
            """INSERT INTO webhook_outbox (hook, kind, transition_id, driver_id, release, at, body, queued_at,
                                           next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""", rows)

    def cursor(self, server: str) -> int | None:
        """The proven cursor, as this connection sees it (``reads.cursor``)."""
        return reads.cursor(self.conn, server)

    def _transaction(self) -> Transaction:
        return Transaction(self.conn)
