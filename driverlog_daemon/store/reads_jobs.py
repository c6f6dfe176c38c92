"""A driver's jobs over 7, 30 or 90 days (``/api/1.0/drivers/<id>/jobs``, its page): the job lines of its CI
account's kept comments on its review project, read from the comments themselves (:mod:`match.jobs`), whether or
not a comment gave the driver a verdict; the numbers are :mod:`job_health`'s.

The job lines are a function of the kept comment, which is stored once whatever delivered it, so each job result
counts once. A comment's job lines are parsed once per process and kept (a comment never changes), bounded.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections import OrderedDict
from typing import Any

from driverlog_daemon.match.jobs import JobResult, read_jobs
from driverlog_daemon.store import ci_health, job_health, reads

WINDOWS = (7, 30, 90)
DEFAULT_DAYS = 30
_KEPT = 20_000  # comments whose job lines are kept per process
_parsed: OrderedDict[tuple[int, str], tuple[tuple[JobResult, ...], bool]] = OrderedDict()
_lock = threading.Lock()


def _jobs(comment_id: int, sha: str, body: bytes) -> tuple[tuple[JobResult, ...], bool]:
    key = (comment_id, sha)  # ids repeat across files; with the hash, a comment is itself
    with _lock:
        found = _parsed.get(key)
        if found is not None:
            _parsed.move_to_end(key)
            return found
    found = read_jobs(zlib.decompress(body).decode("utf-8", "replace"))
    with _lock:
        _parsed[key] = found
        while len(_parsed) > _KEPT:
            _parsed.popitem(last=False)
    return found


def jobs(conn: sqlite3.Connection, driver_id: int, now: float, days: int) -> dict[str, Any] | None:
    """The driver's jobs and rates over ``days``; None when it has no CI."""
    read = _runs(conn, driver_id, now, days)
    if read is None:
        return None
    runs, verdicts, capped = read
    return {"days": days, "jobs": job_health.summary(runs), "driver": job_health.driver_rates(verdicts, runs),
            "capped_comments": capped}


def flake_gauges(conn: sqlite3.Connection, now: float) -> list[tuple[str, str, str, int, float | None]]:
    """(project, vendor, driver, jobs that flaked, failed share on flaky patch sets) of each CI driver in the
    registry over 30 days: the per-driver job metrics (never per job: bounded cardinality)."""
    out = []
    for driver_id, project, vendor, name in conn.execute(
            "SELECT id, project_id, vendor, name FROM drivers WHERE ci_account IS NOT NULL AND removed_at IS NULL"):
        read = _runs(conn, driver_id, now, DEFAULT_DAYS)
        if read is not None:
            out.append((project, vendor, name, *job_health.flake_share(read[0])))
    return out


def _runs(conn: sqlite3.Connection, driver_id: int, now: float,
          days: int) -> tuple[list[job_health.JobRun], list[tuple[int, int, str]], int] | None:
    row = reads.binding(conn, driver_id)
    if row is None:
        return None
    runs: list[job_health.JobRun] = []
    verdicts: list[tuple[int, int, str]] = []
    capped = 0
    for comment_id, sha, number, ps, at, url, body, verdict in conn.execute(
            """SELECT k.id, k.comment_sha256, k.change_number, k.patch_set, k.comment_time, k.review_url, k.body,
                      (SELECT v.result FROM verifications v WHERE v.driver_id = ? AND v.change_number = k.change_number
                       AND v.patch_set = k.patch_set AND v.ci_account = k.ci_account
                       AND v.comment_sha256 = k.comment_sha256)
               FROM ci_comments k WHERE k.ci_account = ? AND k.project = ? AND k.comment_time >= ?""",
            (driver_id, row[0], row[1], int(now - days * ci_health.DAY))):
        found, cut = _jobs(comment_id, sha, body)
        capped += cut
        runs.extend(job_health.JobRun(j.job, number, ps, at, j.result, j.duration_seconds, j.log_url, url)
                    for j in found)
        if verdict is not None:
            verdicts.append((number, ps, verdict))
    return runs, verdicts, capped
