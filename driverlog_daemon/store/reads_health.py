"""The reads of CI health (docs/health.md), beside :mod:`reads`, on the caller's connection: the horizon, each
driver's runs, pass rates, coverage and silence, its missed changes, its mark history and the newest transitions
(the feeds). The definitions themselves are :mod:`ci_health`'s, on plain data.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from driverlog_daemon.store import ci_health, reads_history, reads_unjudged


def horizon(conn: sqlite3.Connection) -> int | None:
    """Since when (Gerrit's time) every CI result is proven to be in the file: the first backfill's window start
    (the first start's import's, once its windows are read), or later when a backfill since could not reach back
    far enough (``capped``). None: never proven (no backfill committed; a file built by ``replay`` alone)."""
    first = conn.execute("SELECT since FROM backfills ORDER BY id LIMIT 1").fetchone()
    if first is None:
        return None
    start = int(first[0])
    imported = reads_history.first_import_since(conn)  # its window reaches further back, once read whole
    if imported is not None:
        start = min(start, imported)
    capped = conn.execute("SELECT max(since) FROM backfills WHERE capped").fetchone()[0]
    return max(start, int(capped)) if capped is not None else start


def _runs(conn: sqlite3.Connection, driver_id: int, start: float, end: float) -> tuple[int, int]:
    """(runs, passes) of a driver with comment time in [start, end], from whole days and the two partial ones."""
    first_day, last_day = int(start // ci_health.DAY), int(end // ci_health.DAY)
    if first_day == last_day:
        spans = [(start, end)]
        days: tuple[int, int] = (0, 0)
    else:
        spans = [(start, (first_day + 1) * ci_health.DAY - 1), (last_day * ci_health.DAY, end)]
        days = conn.execute("SELECT coalesce(sum(runs), 0), coalesce(sum(passes), 0) FROM driver_days "
                            "WHERE driver_id = ? AND day > ? AND day < ?", (driver_id, first_day, last_day)).fetchone()
    runs, passes = days
    for a, b in spans:
        n, p = conn.execute("SELECT count(*), coalesce(sum(result = 'success'), 0) FROM verifications "
                            "WHERE driver_id = ? AND comment_time >= ? AND comment_time <= ?",
                            (driver_id, int(-(-a // 1)), int(b // 1))).fetchone()
        runs, passes = runs + n, passes + p
    return int(runs), int(passes)


def ci_health_of_drivers(conn: sqlite3.Connection, now: float, silence_days: float) -> dict[int, dict[str, Any]]:
    """Every CI driver's health, by docs/health.md's definitions: runs, passes and pass rate over 7, 30 and 90 days,
    coverage of its review project's merged changes over 30 days, the newest success, at_risk, and why comments of
    its CI did not count (:mod:`reads_unjudged`; the latest of them are read per driver)."""
    known_since = horizon(conn)
    drivers = conn.execute("SELECT id, review_project FROM drivers WHERE ci_account IS NOT NULL").fetchall()
    last_success = dict(conn.execute("SELECT driver_id, max(last_success_time) FROM driver_status "
                                     "GROUP BY driver_id").fetchall())
    start = now - ci_health.COVERAGE_DAYS * ci_health.DAY
    merged: dict[str, int] = {}
    covered: dict[int, int] = {}
    for project, n in conn.execute(
            "SELECT project, count(*) FROM changes WHERE status = 'MERGED' AND merged_patch_set IS NOT NULL "
            "AND merged_time >= ? AND merged_time <= ? GROUP BY project", (start, now)):
        merged[project] = n
    for driver_id, n in conn.execute(
            # CROSS JOIN keeps this order: the window's merged changes, then their verifications by index
            """SELECT v.driver_id, count(DISTINCT c.change_number)
               FROM changes c
               CROSS JOIN verifications v ON v.change_number = c.change_number AND v.patch_set = c.merged_patch_set
               CROSS JOIN drivers d ON d.id = v.driver_id AND d.review_project = c.project
               WHERE c.status = 'MERGED' AND c.merged_patch_set IS NOT NULL AND c.merged_time >= ?
                     AND c.merged_time <= ?
               GROUP BY v.driver_id""", (start, now)):
        covered[driver_id] = n
    unjudged = reads_unjudged.counts(conn, now)
    out: dict[int, dict[str, Any]] = {}
    for driver_id, project in drivers:
        runs: dict[str, int] = {}
        rates: dict[str, float | None] = {}
        for days in ci_health.WINDOWS:
            n, p = _runs(conn, driver_id, now - days * ci_health.DAY, now)
            runs[str(days)], rates[str(days)] = n, ci_health.ratio(p, n)
        m, c = merged.get(project, 0), covered.get(driver_id, 0)
        success = last_success.get(driver_id)
        out[driver_id] = {
            "runs": runs, "pass_rate": rates,
            "coverage": {"days": ci_health.COVERAGE_DAYS, "merged": m, "covered": c, "ratio": ci_health.ratio(c, m)},
            "last_success": success, "at_risk": ci_health.at_risk(success, known_since, now, silence_days),
            "unjudged": unjudged.get(driver_id),
        }
    return out


def registered_ci_health(conn: sqlite3.Connection, now: float,
                      silence_days: float) -> list[tuple[tuple[str, str, str, str], dict[str, Any]]]:
    """((project_id, vendor, name, ci_account), health) of every CI driver still in the registry: the gauges'
    and ``driverlog-daemon health``'s rows."""
    names = {i: (p, v, n, a) for i, p, v, n, a in conn.execute(
        "SELECT id, project_id, vendor, name, ci_account FROM drivers WHERE removed_at IS NULL")}
    return [(names[i], h) for i, h in ci_health_of_drivers(conn, now, silence_days).items() if i in names]


def missed(conn: sqlite3.Connection, driver_id: int, now: float, days: int) -> list[dict[str, Any]]:
    """The merged changes of the driver's review project in the window with no verification by it at the merged
    patch set, newest merge first."""
    rows = conn.execute(
        """SELECT c.change_number, c.branch, c.merged_time,
                  (SELECT v.review_url FROM verifications v WHERE v.change_number = c.change_number
                   AND v.project = c.project AND v.review_url IS NOT NULL LIMIT 1)
           FROM changes c JOIN drivers d ON d.id = ? AND c.project = d.review_project
           WHERE c.status = 'MERGED' AND c.merged_patch_set IS NOT NULL AND c.merged_time >= ? AND c.merged_time <= ?
             AND NOT EXISTS (SELECT 1 FROM verifications v WHERE v.driver_id = d.id
                             AND v.change_number = c.change_number AND v.patch_set = c.merged_patch_set)
           ORDER BY c.merged_time DESC, c.change_number DESC""", (driver_id, now - days * ci_health.DAY, now))
    return [{"change_number": n, "branch": b, "merged_time": t, "review_url": u} for n, b, t, u in rows]


def transitions(conn: sqlite3.Connection, driver_id: int, *, limit: int, offset: int = 0
                ) -> tuple[list[dict[str, Any]], int]:
    """A driver's mark history, newest first, one page; and how many transitions there are."""
    total = int(conn.execute("SELECT count(*) FROM mark_transitions WHERE driver_id = ?", (driver_id,)).fetchone()[0])
    rows = conn.execute(
        """SELECT t.*, v.review_url FROM mark_transitions t JOIN verifications v ON v.id = t.verification_id
           WHERE t.driver_id = ? ORDER BY t.at DESC, t.id LIMIT ? OFFSET ?""", (driver_id, limit, offset))
    return [ci_health.transition_object(ci_health.Transition(*row[:-1]), row[-1]) for row in rows], total


def daily(conn: sqlite3.Connection, driver_id: int, now: float, days: int = 90) -> list[tuple[int, int, int]]:
    """(day, passes, failures) of each of the last ``days`` UTC days (the driver page's chart), oldest first."""
    today = int(now // ci_health.DAY)
    counts = {d: (p, r - p) for d, r, p in conn.execute(
        "SELECT day, runs, passes FROM driver_days WHERE driver_id = ? AND day > ? AND day <= ?",
        (driver_id, today - days, today))}
    return [(d, *counts.get(d, (0, 0))) for d in range(today - days + 1, today + 1)]


def recent_transitions(conn: sqlite3.Connection, *, driver_ids: list[int] | None = None,
                       releases: frozenset[str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest mark transitions (of these drivers, in these lower-case releases), newest first, with what a
    feed entry shows: the driver, the evidence, the review."""
    where: list[str] = []
    params: list[Any] = []
    if driver_ids is not None:
        where.append(f"t.driver_id IN ({', '.join('?' * len(driver_ids))})")
        params.extend(driver_ids)
    else:  # every driver's: those still in the registry (a removed one's history stays on its own page and feed)
        where.append("d.removed_at IS NULL")
    if releases is not None:
        where.append(f"lower(t.release) IN ({', '.join('?' * len(releases))})")
        params.extend(sorted(releases))
    rows = conn.execute(
        f"""SELECT t.*, d.project_id, d.vendor, d.name, v.evidence, v.review_url
            FROM mark_transitions t JOIN drivers d ON d.id = t.driver_id
                 JOIN verifications v ON v.id = t.verification_id
            {("WHERE " + " AND ".join(where)) if where else ""}
            ORDER BY t.at DESC, t.id LIMIT ?""", (*params, limit))
    out = []
    for row in rows:
        width = len(ci_health.Transition._fields)
        t, (project_id, vendor, name, evidence, review_url) = ci_health.Transition(*row[:width]), row[width:]
        out.append({**ci_health.transition_notice(t, (project_id, vendor, name), review_url),
                    "release_name": t.release, "evidence": evidence})
    return out
