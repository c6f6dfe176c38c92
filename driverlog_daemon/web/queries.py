"""The web side's reads: plain rows from the database, opened read-only (``mode=ro``).

Every query reads the tables the triggers keep current (``driver_marks``, ``driver_status``) or pages the
verifications by index, so none costs more than O(drivers x releases) or one page.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driverlog_daemon import store as store_mod


@dataclass(frozen=True, slots=True)
class Shown:
    """A verification as the page and the API show it: a mark, or the latest activity (newest on any change)."""

    release: str
    result: str
    evidence: str
    comment_time: int
    review_url: str | None
    change_number: int
    patch_set: int


@dataclass(frozen=True, slots=True)
class DriverRow:
    id: int
    key: tuple[str, str, str]  # (project_id, vendor, name)
    removed: bool
    marks: dict[str, Shown]  # by release id
    latest: Shown | None  # latest activity
    last_success_time: int | None


class Reader:
    """Read-only connections, one per thread (waitress serves from a pool), and the database's version."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._version_lock = threading.Lock()
        self._version_conn: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = store_mod.connect(self.path, readonly=True)
            self._local.conn = conn
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
        with self._version_lock:
            if self._version_conn is None:
                self._version_conn = store_mod.connect(self.path, readonly=True)
            return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])


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
            out[row.key] = DriverRow(row.id, row.key, row.removed, row.marks,
                                     latest[did][1] if did in latest else None, success.get(did))
    return out


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


def release_times(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, int, int | None]]:
    """(project_id, vendor, name, release, newest verification time, newest mark success time) for the gauges."""
    return [tuple(r) for r in conn.execute(
        """SELECT d.project_id, d.vendor, d.name, s.release, s.last_comment_time,
                  (SELECT m.comment_time FROM driver_marks m WHERE m.driver_id = s.driver_id AND m.release = s.release
                                                          AND m.result = 'success')
           FROM driver_status s JOIN drivers d ON d.id = s.driver_id
           WHERE d.removed_at IS NULL AND s.release != ''""")]
