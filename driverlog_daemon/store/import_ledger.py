"""The writer's side of history imports: planning one, what each of its steps did, the registries applied.

An import (``imports``) is planned with its work (``import_work``: a row per CI account, review project and driver
to judge again), in the transaction that applies the registry; every step writes its progress in the transaction
of its results, so a restart resumes at the last step committed and a step given twice only finds its rows
present. Plain functions on the writer's connection, inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from driverlog_daemon.model import DONE, WINDOW, ImportStep, Work

#: What the first start's import finds from this long before it was planned on is news, not history. Gerrit's clock
#: at the start is not known in ours (the changes read then include some updated after it), and a day's margin
#: covers any skew short of a day: at worst the last day's transitions before the start are announced too.
NEWS_MARGIN = 86400


class Plan(NamedTuple):
    kind: str  # first, registry
    since: int  # Gerrit's time the window starts at
    search_floor: int | None
    work: tuple[Work, ...]


def plan(conn: sqlite3.Connection, p: Plan, version: int | None, now: float) -> int | None:
    """Record an import and its work; its id (None: nothing to do)."""
    if not p.work:
        return None
    bindings = len({d for w in p.work for d in w.drivers})
    news_since = int(now - NEWS_MARGIN) if p.kind == "first" else None
    cur = conn.execute("INSERT INTO imports (kind, registry_version, since, search_floor, news_since, started_at, "
                       "bindings) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (p.kind, version, p.since, p.search_floor, news_since, now, bindings))
    import_id = int(cur.lastrowid or 0)
    conn.executemany(
        "INSERT INTO import_work (import_id, kind, name, drivers, phase, position, reread_since) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(import_id, w.kind, w.name, json.dumps(sorted(w.drivers)), w.phase, w.position, w.reread_since)
         for w in p.work])
    return import_id


def record_step(conn: sqlite3.Connection, step: ImportStep, recovered: int, already_present: int,
                now: float) -> bool:
    """Write a step's counts and its work rows; close the import when nothing is left. True when it closed."""
    conn.execute(
        """UPDATE imports SET queries = queries + ?, commands = commands + ?, changes_read = changes_read + ?,
                              ci_messages = ci_messages + ?, recovered = recovered + ?,
                              already_present = already_present + ?, throttled_seconds = throttled_seconds + ?,
                              rejudged = rejudged + ?, last_error = NULL
           WHERE id = ?""",
        (step.queries, step.commands, step.changes_read, step.ci_messages, recovered, already_present,
         step.throttled_seconds, step.rejudged, step.import_id))
    since = conn.execute("SELECT since FROM imports WHERE id = ?", (step.import_id,)).fetchone()
    for w in step.work:
        before = conn.execute("SELECT phase FROM import_work WHERE import_id = ? AND kind = ? AND name = ?",
                              (step.import_id, w.kind, w.name)).fetchone()
        conn.execute("UPDATE import_work SET phase = ?, position = ?, reread_since = ?, finished_at = ? "
                     "WHERE import_id = ? AND kind = ? AND name = ?",
                     (w.phase, w.position, w.reread_since, now if w.phase == DONE else None, step.import_id,
                      w.kind, w.name))
        if before is not None and before[0] == WINDOW and w.phase != WINDOW and since is not None:
            # its window is read: while it stays registered the file holds all it did since
            conn.execute("INSERT INTO imported (kind, name, since, at) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (kind, name) DO UPDATE SET since = min(since, excluded.since), at = excluded.at",
                         (w.kind, w.name, since[0], now))
    return _close_if_done(conn, step.import_id, now)


def _close_if_done(conn: sqlite3.Connection, import_id: int, now: float) -> bool:
    done = conn.execute(
        """WITH d AS (SELECT value AS driver, min(phase = 'done') AS done
                      FROM import_work, json_each(import_work.drivers) WHERE import_id = ?1 GROUP BY value)
           SELECT coalesce(sum(done), 0) FROM d""", (import_id,)).fetchone()[0]
    left = conn.execute("SELECT count(*) FROM import_work WHERE import_id = ? AND phase != 'done'",
                        (import_id,)).fetchone()[0]
    conn.execute("UPDATE imports SET bindings_done = ?, finished_at = CASE WHEN ? THEN ? ELSE finished_at END "
                 "WHERE id = ?", (done, left == 0, now, import_id))
    return bool(left == 0)


def step_failed(conn: sqlite3.Connection, import_id: int, error: str) -> None:
    conn.execute("UPDATE imports SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error[:300], import_id))


def supersede(conn: sqlite3.Connection, now: float) -> None:
    """A first import covers every binding: the Gerrit work still pending of earlier imports is done by it."""
    conn.execute("UPDATE import_work SET phase = 'done', finished_at = ? "
                 "WHERE kind IN ('account', 'project') AND phase != 'done'", (now,))
    for (import_id,) in conn.execute("SELECT id FROM imports WHERE finished_at IS NULL").fetchall():
        _close_if_done(conn, import_id, now)


def forget(conn: sqlite3.Connection, accounts: Iterable[str], projects: Iterable[str]) -> None:
    """Accounts and projects that left the registry: the file no longer follows them, so a return imports again."""
    conn.executemany("DELETE FROM imported WHERE kind = 'account' AND name = ?", [(a,) for a in accounts])
    conn.executemany("DELETE FROM imported WHERE kind = 'project' AND name = ?", [(p,) for p in projects])


def imported(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(kind, name) -> since, for the accounts and projects whose window a finished step covered."""
    return {(k, n): int(s) for k, n, s in conn.execute("SELECT kind, name, since FROM imported")}


def first_planned(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM imports WHERE kind = 'first' LIMIT 1").fetchone() is not None


# ------------------------------------------------------------------------------------------- registry versions


def latest_version(conn: sqlite3.Connection) -> tuple[int, str, bytes] | None:
    """(id, sha256, the registry's bytes) of the registry applied last, or None."""
    row = conn.execute("SELECT id, sha256, document FROM registry_versions ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]), zlib.decompress(row[2]))


def record_version(conn: sqlite3.Connection, raw: bytes, source: str, counts: Sequence[int], now: float) -> int:
    """Record a registry applied (its bytes, compressed); its id."""
    drivers, bindings, accounts = counts
    cur = conn.execute(
        "INSERT INTO registry_versions (sha256, source, applied_at, drivers, ci_bindings, ci_accounts, document) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (hashlib.sha256(raw).hexdigest(), source, now, drivers, bindings, accounts, zlib.compress(raw, 6)))
    return int(cur.lastrowid or 0)
