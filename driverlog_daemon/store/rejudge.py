"""A registry change reaching the past: one driver's verifications judged again from the kept comments, and what
derives from them (its latest activity, day counts, mark candidates) made again, in the writer's transaction.

The kept comments (``ci_comments``) are judged under the registry in force for that driver alone: a verdict that
appears is inserted, one that changed (result, evidence, release) updated, one that no longer holds (another
account, another project, a pattern that no longer matches) removed. A verification whose comment is not kept (a
file from before schema version 7) keeps its verdict. When only the releases changed, the verifications are mapped
to releases again without judging. The store then recomputes the driver's mark history from scratch (marks_dirty
from time 0), so the transitions equal the definition over the new verdicts; their cause is the registry change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import NamedTuple

from driverlog_daemon.match.rules import release_for
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import marks
from driverlog_daemon.store.reads_preview import kept_judgements

_STATUS = """
    WITH v AS (SELECT id, release, result, comment_time FROM verifications WHERE driver_id = ?1),
         newest AS (SELECT release, id, result, comment_time,
                           row_number() OVER (PARTITION BY release ORDER BY comment_time DESC, id DESC) AS n FROM v),
         success AS (SELECT release, id, comment_time,
                            row_number() OVER (PARTITION BY release ORDER BY comment_time DESC, id DESC) AS n
                     FROM v WHERE result = 'success'),
         counts AS (SELECT release, count(*) AS runs, sum(result = 'success') AS passes FROM v GROUP BY release)
    INSERT INTO driver_status (driver_id, release, last_verification_id, last_result, last_comment_time,
                               last_success_verification_id, last_success_time, verifications, successes)
    SELECT ?1, l.release, l.id, l.result, l.comment_time, s.id, s.comment_time, c.runs, c.passes
    FROM newest l JOIN counts c ON c.release = l.release LEFT JOIN success s ON s.release = l.release AND s.n = 1
    WHERE l.n = 1"""

_KEY = "(ci_account, change_number, patch_set, comment_sha256)"


class Rejudged(NamedTuple):
    added: int
    changed: int
    removed: int

    @property
    def total(self) -> int:
        return self.added + self.changed + self.removed


def verdicts(conn: sqlite3.Connection, driver_id: int, key: tuple[str, str, str], registry: Registry,
             received_at: float) -> Rejudged:
    """Judge again, for this driver, every kept comment of its CI account; write the differences."""
    driver = next((d for d in registry.drivers if d.key == key), None)
    wanted: dict[tuple[str, int, int, str], tuple[object, ...]] = {}
    if driver is not None and driver.ci is not None:
        for found, source in kept_judgements(conn, driver, registry):
            for v in found:
                wanted[(v.ci_account, v.change_number, v.patch_set, v.comment_sha256)] = (
                    driver_id, *v[1:], received_at, source)
    have = {(a, n, ps, sha): (vid, result, evidence, release) for vid, a, n, ps, sha, result, evidence, release in
            conn.execute(
                f"""SELECT v.id, v.ci_account, v.change_number, v.patch_set, v.comment_sha256, v.result, v.evidence,
                           v.release
                    FROM verifications v WHERE v.driver_id = ? AND EXISTS (
                        SELECT 1 FROM ci_comments k WHERE {_KEY} = (v.ci_account, v.change_number, v.patch_set,
                                                                    v.comment_sha256))""", (driver_id,))}
    gone = [vid for key, (vid, *_) in have.items() if key not in wanted]
    changed = [(row[6], row[7], row[10], have[key][0]) for key, row in wanted.items()
               if key in have and (row[6], row[7], row[10]) != have[key][1:]]
    new = [row for key, row in wanted.items() if key not in have]
    conn.executemany("DELETE FROM verifications WHERE id = ?", [(vid,) for vid in gone])
    conn.executemany("UPDATE verifications SET result = ?, evidence = ?, release = ? WHERE id = ?", changed)
    if new:
        names = ("driver_id", "ci_account", "change_number", "patch_set", "comment_sha256", "comment_time",
                 "result", "evidence", "project", "branch", "release", "change_status", "review_url", "change_id",
                 "received_at", "source")
        conn.executemany(f"INSERT OR IGNORE INTO verifications ({', '.join(names)}) "
                         f"VALUES ({', '.join('?' * len(names))})", new)
    return Rejudged(len(new), len(changed), len(gone))


def releases(conn: sqlite3.Connection, driver_id: int, registry: Registry) -> Rejudged:
    """Map the driver's verifications to the registry's releases again (only the releases changed)."""
    mapped: Callable[[str, int], str] = lambda branch, when: release_for(branch, when, registry)  # noqa: E731
    conn.create_function("driverlog_release", 2, mapped, deterministic=True)
    cur = conn.execute("UPDATE verifications SET release = driverlog_release(branch, comment_time) "
                       "WHERE driver_id = ? AND release IS NOT driverlog_release(branch, comment_time)", (driver_id,))
    return Rejudged(0, max(cur.rowcount, 0), 0)


def clear_derived(conn: sqlite3.Connection, driver_id: int) -> None:
    """Before the verifications change: what refers to them goes (made again by :func:`derive`); every pair the
    driver had a mark, candidate or transition in is due to be computed again from the beginning."""
    conn.execute(
        """INSERT INTO marks_dirty (driver_id, release, since)
           SELECT ?1, release, 0 FROM (SELECT release FROM mark_candidates WHERE driver_id = ?1
                                       UNION SELECT release FROM mark_transitions WHERE driver_id = ?1
                                       UNION SELECT release FROM driver_marks WHERE driver_id = ?1)
           WHERE true
           ON CONFLICT (driver_id, release) DO UPDATE SET since = 0""", (driver_id,))
    for table in ("driver_marks", "mark_candidates", "driver_status", "driver_days"):
        conn.execute(f"DELETE FROM {table} WHERE driver_id = ?", (driver_id,))


def derive(conn: sqlite3.Connection, driver_id: int) -> None:
    """After the verifications changed: latest activity, day counts and candidates of the driver made again."""
    conn.execute("DELETE FROM driver_status WHERE driver_id = ?", (driver_id,))  # the insert trigger's partial rows
    conn.execute(_STATUS, (driver_id,))
    conn.execute("""INSERT INTO driver_days (driver_id, day, runs, passes)
                    SELECT driver_id, comment_time / 86400, count(*), sum(result = 'success') FROM verifications
                    WHERE driver_id = ? GROUP BY comment_time / 86400""", (driver_id,))
    marks.candidates_of_driver(conn, driver_id)
    conn.execute(
        """INSERT INTO marks_dirty (driver_id, release, since)
           SELECT ?1, release, 0 FROM mark_candidates WHERE driver_id = ?1 GROUP BY release
           ON CONFLICT (driver_id, release) DO UPDATE SET since = 0""", (driver_id,))
