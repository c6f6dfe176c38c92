"""The writes of one batch, a function a table, in the caller's transaction (``Store.commit``): changes, verifications,
kept comments, the cursor, the gaps and the backfill ledger. The marks and their history are ``marks``'s.

Rows go in in the order of the keys SQLite looks them up by (neighbours in a B-tree follow each other), in
multi-row statements (``schema.values_statements``).
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from driverlog_daemon.model import BackfillRun, KeptComment, Verification
from driverlog_daemon.parse.changes import ChangeRow
from driverlog_daemon.store import marks
from driverlog_daemon.store.schema import values_statements

#: A verification row is its Verification with the driver's id for its key, then when and how it arrived: the
#: columns are named from the model's fields, so the two cannot drift apart.
VERIFICATION_COLUMNS = ("driver_id", *Verification._fields[1:], "received_at", "source")
#: A verification row's natural key in its unique index's order: driver, change, patch set, CI account, comment.
NATURAL_KEY_ORDER = operator.itemgetter(*(VERIFICATION_COLUMNS.index(c) for c in (
    "driver_id", "change_number", "patch_set", "ci_account", "comment_sha256")))
_INSERT_VERIFICATIONS = f"INSERT OR IGNORE INTO verifications ({', '.join(VERIFICATION_COLUMNS)})"
#: A kept comment's row: its KeptComment, then when and how it arrived; in its unique index's order.
KEPT_COLUMNS = (*KeptComment._fields, "received_at", "source")
_INSERT_KEPT = f"INSERT OR IGNORE INTO ci_comments ({', '.join(KEPT_COLUMNS)})"

# Facts merge order-independently: a merge is final (MERGED wins, and the merged patch set is set once, as in
# Gerrit); otherwise the status of the newest fact wins (equal times: ABANDONED over NEW, a fixed order); patch
# set numbers and the last update only grow; the merge time is the earliest said (a query row gives an upper
# bound). SQLite's max()/min() of a NULL is NULL, hence coalesce(max(a, b), a, b). parse.changes does the same.
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


def changes(conn: sqlite3.Connection, rows: Sequence[ChangeRow]) -> None:
    """Merge the batch's change rows; the verifications of a change new to the file that arrives merged become mark
    candidates (a known change's merge is the update trigger's)."""
    merging = [row[0] for row in rows if row[6] is not None]
    new_merged = "[]" if not merging else conn.execute(
        """SELECT json_group_array(value) FROM json_each(?)
           WHERE value NOT IN (SELECT change_number FROM changes)""", (json.dumps(merging),)).fetchone()[0]
    for sql, values in values_statements(_UPSERT_CHANGES, _UPSERT_CHANGES_TAIL, 9, rows):
        conn.execute(sql, values)
    if new_merged != "[]":
        marks.merged_candidates(conn, new_merged)


def verifications(conn: sqlite3.Connection, by_result: Mapping[str, Sequence[tuple[Any, ...]]]) -> dict[str, int]:
    """Insert the rows not present yet (natural key), then what the new ones add beyond themselves (day counts,
    mark candidates, pairs to compute again), set-wise; how many were new, by result."""
    first_new = int(conn.execute("SELECT coalesce(max(id), 0) + 1 FROM verifications").fetchone()[0])
    inserted = dict.fromkeys(by_result, 0)
    for result, rows in by_result.items():
        for sql, values in values_statements(_INSERT_VERIFICATIONS, "", len(VERIFICATION_COLUMNS), rows):
            inserted[result] += max(conn.execute(sql, values).rowcount, 0)
    if any(inserted.values()):  # the batch's new rows: row ids only grow
        for statement in marks.FOR_NEW_VERIFICATIONS:
            conn.execute(statement, (first_new,))
    return inserted


# The day counts of the comments a batch kept (row id > ?), once per batch
_COMMENT_DAYS = """
    INSERT INTO ci_comment_days (ci_account, project, day, comments, last_comment_time)
    SELECT ci_account, project, comment_time / 86400, count(*), max(comment_time) FROM ci_comments WHERE id > ?
    GROUP BY 1, 2, 3
    ON CONFLICT (ci_account, project, day) DO UPDATE SET comments = comments + excluded.comments,
        last_comment_time = max(last_comment_time, excluded.last_comment_time)"""


def kept(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Keep the CI comments not kept yet (natural key), and count them by account, project and day."""
    if not rows:
        return
    last = conn.execute("SELECT coalesce(max(id), 0) FROM ci_comments").fetchone()[0]
    for sql, values in values_statements(_INSERT_KEPT, "", len(KEPT_COLUMNS), rows):
        conn.execute(sql, values)
    conn.execute(_COMMENT_DAYS, (last,))


def advance_cursor(conn: sqlite3.Connection, server: str, position: int, now: float) -> None:
    """The stream committed events up to ``position`` (``parse.clock``): that is proven, unless an open gap
    starts earlier. ``newest_event_time`` is the stream's position, as the cursor would be without gaps."""
    conn.execute(
        """INSERT INTO stream_state (server, last_event_time, newest_event_time, updated_at) VALUES (?1, ?2, ?2, ?3)
           ON CONFLICT (server) DO UPDATE SET newest_event_time = excluded.newest_event_time""",
        (server, position, now))
    prove(conn, server, position, now)


def prove(conn: sqlite3.Connection, server: str, up_to: int, now: float) -> None:
    """Move the cursor to ``up_to``, but never across an open gap. Back too: after a step back of Gerrit's
    clock, what comes next is stamped before the old cursor, which then claims what nobody has seen yet."""
    conn.execute(
        """UPDATE stream_state SET
               last_event_time = min(?2, coalesce(
                   (SELECT min(since) FROM gaps WHERE server = ?1 AND closed_at IS NULL), ?2)),
               updated_at = ?3
           WHERE server = ?1""", (server, up_to, now))


def open_gap(conn: sqlite3.Connection, server: str, since: int, reason: str, now: float) -> int:
    """Record a window whose CI results are not proven to be here; its id."""
    conn.execute("""INSERT INTO stream_state (server, last_event_time, newest_event_time, updated_at)
                    VALUES (?1, ?2, NULL, ?3) ON CONFLICT (server) DO NOTHING""", (server, since, now))
    cur = conn.execute("INSERT INTO gaps (server, since, reason, opened_at) VALUES (?, ?, ?, ?)",
                       (server, since, reason, now))
    return int(cur.lastrowid or 0)


def close_gaps(conn: sqlite3.Connection, server: str, up_to_id: int, stream_position: int | None,
               closed_by: int | None, now: float) -> list[tuple[int, str, float]]:
    """Close the open gaps with id <= ``up_to_id`` (a backfill covered them: its ``backfills`` id is
    ``closed_by``) and prove what the stream has committed since. Returns (id, reason, opened_at) of each."""
    closed = [(int(i), str(r), float(o)) for i, r, o in conn.execute(
        "SELECT id, reason, opened_at FROM gaps WHERE server = ? AND closed_at IS NULL AND id <= ?",
        (server, up_to_id))]
    conn.execute("UPDATE gaps SET closed_at = ?, closed_by = ? WHERE server = ? AND closed_at IS NULL AND id <= ?",
                 (now, closed_by, server, up_to_id))
    if stream_position is not None:
        prove(conn, server, stream_position, now)
    return closed


def gap_failed(conn: sqlite3.Connection, server: str, up_to_id: int, error: str) -> None:
    conn.execute("UPDATE gaps SET attempts = attempts + 1, last_error = ? "
                 "WHERE server = ? AND closed_at IS NULL AND id <= ?", (error[:300], server, up_to_id))


def backfill(conn: sqlite3.Connection, server: str, run: BackfillRun, recovered: int, already_present: int,
             now: float) -> int:
    """A backfill's line in the ingestion ledger; its id."""
    cur = conn.execute(
        """INSERT INTO backfills (server, trigger, since, started_at, finished_at, queries, commands, repasses,
                                  changes_read, ci_messages, recovered, already_present, throttled_seconds, capped)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (server, run.trigger, run.since, run.started_at, now, run.queries, run.commands, run.repasses,
         run.changes_read, run.ci_messages, recovered, already_present, run.throttled_seconds, run.capped))
    return int(cur.lastrowid or 0)
