"""Every read of the database, in one place: the daemon, the metrics, the web side and the CLI ask here.

Plain rows from a connection the caller owns (the web side's and the daemon's are read-only, ``mode=ro``). Each
query reads the tables the triggers keep current (``driver_marks``, ``driver_status``), the small ``gaps`` and
``stream_state``, or pages the verifications by an index, so none costs more than O(drivers x releases) or a page.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from driverlog_daemon.store.schema import connect

# ------------------------------------------------------------------------------------- stream state, gaps


class Gap(NamedTuple):
    id: int
    since: int  # Gerrit's time
    reason: str
    opened_at: float  # the daemon's time
    attempts: int
    last_error: str | None


def cursor(conn: sqlite3.Connection, server: str) -> int | None:
    """The proven cursor (``stream_state.last_event_time``): every CI result up to it is in the database."""
    row = conn.execute("SELECT last_event_time FROM stream_state WHERE server = ?", (server,)).fetchone()
    return None if row is None else int(row[0])


def last_stream(conn: sqlite3.Connection) -> tuple[str, int | None, float, int] | None:
    """The server whose stream the file last recorded: (server, its position, when written, open gaps)."""
    row = conn.execute("SELECT server, newest_event_time, updated_at FROM stream_state "
                       "ORDER BY updated_at DESC LIMIT 1").fetchone()
    if row is None:
        return None
    (gaps,) = conn.execute("SELECT count(*) FROM gaps WHERE server = ? AND closed_at IS NULL", (row[0],)).fetchone()
    return str(row[0]), None if row[1] is None else int(row[1]), float(row[2]), int(gaps)


def cursor_stored(conn: sqlite3.Connection, server: str) -> tuple[int, float] | None:
    """The cursor and when it was last written (the daemon's clock)."""
    row = conn.execute("SELECT last_event_time, updated_at FROM stream_state WHERE server = ?", (server,)).fetchone()
    return None if row is None else (int(row[0]), float(row[1]))


def newest_event_time(conn: sqlite3.Connection, server: str) -> int | None:
    """The newest ``eventCreatedOn`` committed from the server's stream."""
    row = conn.execute("SELECT newest_event_time FROM stream_state WHERE server = ?", (server,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def open_gaps(conn: sqlite3.Connection, server: str) -> list[Gap]:
    """The server's open gaps, oldest first."""
    return [Gap(*row) for row in conn.execute(
        "SELECT id, since, reason, opened_at, attempts, last_error FROM gaps WHERE server = ? AND closed_at IS NULL "
        "ORDER BY since, id", (server,))]


def unknown_merges(conn: sqlite3.Connection, limit: int = 500) -> list[int]:
    """Changes known to be merged whose merged patch set is not known yet (backfill asks Gerrit for them)."""
    return [n for (n,) in conn.execute(
        "SELECT change_number FROM changes WHERE status = 'MERGED' AND merged_patch_set IS NULL "
        "ORDER BY change_number DESC LIMIT ?", (limit,))]


_BACKFILL_FIELDS = ("id", "trigger", "since", "started_at", "finished_at", "queries", "commands", "repasses",
                    "changes_read", "ci_messages", "recovered", "already_present", "throttled_seconds")


def ingestion(conn: sqlite3.Connection, *, limit: int = 50) -> dict[str, Any]:
    """The ingestion ledger: the newest gaps first (why, from when in Gerrit's time, how long open, how many
    attempts, and what the backfill that closed it asked of Gerrit and recovered), and totals over the file."""
    b = ", ".join(f"b.{f}" for f in _BACKFILL_FIELDS)
    gaps = []
    for row in conn.execute(
            f"""SELECT g.id, g.server, g.reason, g.since, g.opened_at, g.closed_at, g.attempts, g.last_error, {b}
                FROM gaps g LEFT JOIN backfills b ON b.id = g.closed_by
                ORDER BY g.opened_at DESC, g.id DESC LIMIT ?""", (limit,)):
        gid, server, reason, since, opened_at, closed_at, attempts, last_error, *run = row
        gaps.append({
            "id": gid, "server": server, "reason": reason, "since": since, "opened_at": opened_at,
            "closed_at": closed_at, "open_seconds": None if closed_at is None else round(closed_at - opened_at, 3),
            "attempts": attempts, "last_error": last_error,
            "backfill": None if run[0] is None else dict(zip(_BACKFILL_FIELDS, run, strict=True)),
        })
    opened, still_open = conn.execute(
        "SELECT count(*), count(*) - count(closed_at) FROM gaps").fetchone()
    runs, commands, repasses, recovered, throttled, first = conn.execute(
        """SELECT count(*), coalesce(sum(commands), 0), coalesce(sum(repasses), 0), coalesce(sum(recovered), 0),
                  coalesce(sum(throttled_seconds), 0), min(started_at) FROM backfills""").fetchone()
    imports, import_commands = conn.execute("SELECT count(*), coalesce(sum(commands), 0) FROM imports").fetchone()
    totals = {"gaps": opened, "open_gaps": still_open, "backfills": runs, "commands": commands, "pages": commands,
              "repasses": repasses, "recovered": recovered, "throttled_seconds": round(throttled, 3),
              "since": first, "imports": imports, "import_commands": import_commands}
    return {"gaps": gaps, "totals": totals}


# ------------------------------------------------------------------------------------------- summaries


def summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """Counts a person wants to see first: rows per table, results by source, newest verification."""
    out: dict[str, Any] = {}
    for table in ("drivers", "verifications", "driver_status", "changes", "driver_marks", "stream_state"):
        out[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    out["by_source"] = dict(conn.execute("SELECT source, count(*) FROM verifications GROUP BY source").fetchall())
    out["by_result"] = dict(conn.execute("SELECT result, count(*) FROM verifications GROUP BY result").fetchall())
    return out


def verification_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM verifications").fetchone()[0])


def driver_last_times(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, int]]:
    """(project_id, vendor, name, ci_account, newest comment time) of every driver still registered with a CI that
    has a verification."""
    return [tuple(r) for r in conn.execute(
        """SELECT d.project_id, d.vendor, d.name, d.ci_account, MAX(s.last_comment_time)
           FROM driver_status s JOIN drivers d ON d.id = s.driver_id
           WHERE d.removed_at IS NULL AND d.ci_account IS NOT NULL GROUP BY d.id""")]


def release_times(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, int, int | None]]:
    """(project_id, vendor, name, release, newest verification time, newest mark success time) for the gauges."""
    return [tuple(r) for r in conn.execute(
        """SELECT d.project_id, d.vendor, d.name, s.release, s.last_comment_time,
                  (SELECT m.comment_time FROM driver_marks m WHERE m.driver_id = s.driver_id AND m.release = s.release
                                                          AND m.result = 'success')
           FROM driver_status s JOIN drivers d ON d.id = s.driver_id
           WHERE d.removed_at IS NULL AND s.release != ''""")]


# ---------------------------------------------------------------------------------- drivers as shown


class Shown(NamedTuple):
    """A verification as the page and the API show it: a mark, or the latest activity (newest on any change)."""

    release: str
    result: str
    evidence: str
    comment_time: int
    review_url: str | None
    change_number: int
    patch_set: int


class DriverRow(NamedTuple):
    id: int
    key: tuple[str, str, str]  # (project_id, vendor, name)
    removed: bool
    marks: dict[str, Shown]  # by release id
    latest: Shown | None  # latest activity
    last_success_time: int | None


def drivers(conn: sqlite3.Connection) -> dict[tuple[str, str, str], DriverRow]:
    """Every driver in the database with its marks and its latest activity, by DriverLog's key."""
    out: dict[tuple[str, str, str], DriverRow] = {}
    for did, project_id, vendor, name, removed in conn.execute(
            "SELECT id, project_id, vendor, name, removed_at IS NOT NULL FROM drivers"):
        out[(project_id, vendor, name)] = DriverRow(did, (project_id, vendor, name), bool(removed), {}, None, None)
    by_id = {row.id: row for row in out.values()}
    for did, release, result, evidence, t, url, change, ps in conn.execute(
            """SELECT m.driver_id, m.release, m.result, v.evidence, m.comment_time, v.review_url, m.change_number,
                      m.patch_set
               FROM driver_marks m JOIN verifications v ON v.id = m.verification_id"""):
        by_id[did].marks[release] = Shown(release, result, evidence, t, url, change, ps)
    latest: dict[int, tuple[int, Shown]] = {}
    success: dict[int, int] = {}
    for did, release, result, evidence, t, url, change, ps, last_success in conn.execute(
            """SELECT s.driver_id, s.release, s.last_result, v.evidence, s.last_comment_time, v.review_url,
                      v.change_number, v.patch_set, s.last_success_time
               FROM driver_status s JOIN verifications v ON v.id = s.last_verification_id"""):
        if did not in latest or t > latest[did][0]:
            latest[did] = (t, Shown(release, result, evidence, t, url, change, ps))
        if last_success is not None and last_success > success.get(did, -1):
            success[did] = last_success
    for did, row in by_id.items():
        if did in latest or did in success:
            out[row.key] = row._replace(latest=latest[did][1] if did in latest else None,
                                        last_success_time=success.get(did))
    return out


def binding(conn: sqlite3.Connection, driver_id: int) -> tuple[str, str] | None:
    """(CI account, review project) of a driver the file knows with a CI; None otherwise."""
    row = conn.execute("SELECT ci_account, review_project FROM drivers WHERE id = ?", (driver_id,)).fetchone()
    return None if row is None or row[0] is None else (str(row[0]), str(row[1]))


def driver_key(conn: sqlite3.Connection, driver_id: int) -> tuple[tuple[str, str, str], bool] | None:
    """A driver's (project_id, vendor, name) and whether it left the registry; None for an unknown id."""
    row = conn.execute("SELECT project_id, vendor, name, removed_at IS NOT NULL FROM drivers WHERE id = ?",
                       (driver_id,)).fetchone()
    return None if row is None else ((row[0], row[1], row[2]), bool(row[3]))


def history(conn: sqlite3.Connection, driver_id: int, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """A driver's verifications, newest first, one page; and how many there are."""
    total = int(conn.execute("SELECT coalesce(sum(verifications), 0) FROM driver_status WHERE driver_id = ?",
                             (driver_id,)).fetchone()[0])
    rows = conn.execute(
        """SELECT id, result, evidence, change_number, patch_set, branch, release, comment_time, review_url, source
           FROM verifications WHERE driver_id = ? ORDER BY comment_time DESC, id DESC LIMIT ? OFFSET ?""",
        (driver_id, limit, offset))
    keys = ("id", "result", "evidence", "change_number", "patch_set", "branch", "release", "comment_time",
            "review_url", "source")
    return [dict(zip(keys, r, strict=True)) for r in rows], total


def verifications(conn: sqlite3.Connection, *, driver_id: int | None, since: int | None, after: int,
                  limit: int) -> list[dict[str, Any]]:
    """Verifications in the order they were recorded (row id), after row ``after``, for ``/api/1.0/verifications``."""
    where, params = ["v.id > ?"], [after]
    if driver_id is not None:
        where.append("v.driver_id = ?")
        params.append(driver_id)
    if since is not None:
        where.append("v.comment_time >= ?")
        params.append(since)
    rows = conn.execute(
        f"""SELECT v.id, v.driver_id, d.project_id, d.vendor, d.name, v.ci_account, v.change_number, v.patch_set,
                   v.result, v.evidence, v.project, v.branch, v.release, v.comment_time, v.review_url, v.source
            FROM verifications v JOIN drivers d ON d.id = v.driver_id
            WHERE {" AND ".join(where)} ORDER BY v.id LIMIT ?""", (*params, limit))
    keys = ("id", "driver_id", "project_id", "vendor", "driver", "ci_account", "change_number", "patch_set", "result",
            "evidence", "project", "branch", "release", "comment_time", "review_url", "source")
    return [dict(zip(keys, r, strict=True)) for r in rows]


# --------------------------------------------------------------------------------------- connections


class Reader:
    """Read-only connections to one file, one per thread (a server's pool, the daemon's hooks), and its version."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._version_conn: sqlite3.Connection | None = None
        self._opened: list[sqlite3.Connection] = []

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same committed state."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def version(self) -> int:
        """Changes whenever another connection commits (``PRAGMA data_version`` on one long-lived connection)."""
        with self._lock:
            if self._version_conn is None:
                self._version_conn = connect(self.path, readonly=True)
            return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        """Close every connection this reader opened, from any thread, once no thread reads on them any more."""
        with self._lock:
            for conn in [*self._opened, *([self._version_conn] if self._version_conn else [])]:
                conn.close()
            self._opened, self._version_conn = [], None
        self._local = threading.local()


def webhook_outbox(conn: sqlite3.Connection, now: float) -> dict[str, dict[str, Any]]:
    """Per hook: deliveries pending, delivered, dead, and the age of the oldest pending one (seconds, or null)."""
    out = {}
    for hook, pending, delivered, dead, oldest in conn.execute(
            """SELECT hook, sum(delivered_at IS NULL AND dead_at IS NULL), sum(delivered_at IS NOT NULL),
                      sum(dead_at IS NOT NULL), min(CASE WHEN delivered_at IS NULL AND dead_at IS NULL
                                                    THEN queued_at END)
               FROM webhook_outbox GROUP BY hook ORDER BY hook"""):
        out[hook] = {"pending": pending, "delivered": delivered, "dead": dead,
                     "oldest_pending_age_seconds": None if oldest is None else round(max(0.0, now - oldest), 1)}
    return out


def created_at(conn: sqlite3.Connection) -> float:
    """When the database file was made (its first migration): a fixed time for an empty feed."""
    row = conn.execute("SELECT min(applied_at) FROM schema_migrations").fetchone()
    return float(row[0] or 0.0)
