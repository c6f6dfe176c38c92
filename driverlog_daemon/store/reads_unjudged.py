"""Why a CI does not count (docs/health.md): for each CI driver, how many of its CI account's recent comments on
its review project gave it no verdict, the account's comments on projects none of its drivers reports on, when it
last commented at all, and the first lines of the latest comments that gave no verdict — what a vendor needs to fix
a pattern.

The counts come from the day tables (``ci_comment_days``, ``driver_days``): the comments kept minus the verdicts the
driver got, by comment day. The lines are read for one driver at a time, from the newest of its account's kept
comments (the ``ci_comments_recent`` index), decompressed, shortened, e-mail addresses masked.
"""

from __future__ import annotations

import re
import sqlite3
import zlib
from typing import Any

from driverlog_daemon.match.rules import read_comment
from driverlog_daemon.store import ci_health, reads

DAYS = 30
OTHER_PROJECTS = 5  # listed, the busiest first
LATEST = 3  # comments that gave no verdict, with their first lines
LINES, LINE_CHARS = 3, 160
SCANNED = 500  # of the account's newest comments on the project, at most, looking for those
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def counts(conn: sqlite3.Connection, now: float) -> dict[int, dict[str, Any]]:
    """Every CI driver's ``health.unjudged`` counts (no ``latest``: that is :func:`latest`'s, per driver)."""
    since = int(now // ci_health.DAY) - DAYS + 1
    drivers = conn.execute("SELECT id, ci_account, review_project, removed_at IS NULL FROM drivers "
                           "WHERE ci_account IS NOT NULL").fetchall()
    reported: dict[str, set[str]] = {}
    for _, account, project, present in drivers:
        if present:
            reported.setdefault(account, set()).add(project)
    comments: dict[tuple[str, str], int] = {}
    for account, project, n in conn.execute(
            "SELECT ci_account, project, sum(comments) FROM ci_comment_days WHERE day >= ? GROUP BY 1, 2", (since,)):
        comments[(account, project)] = int(n)
    last = dict(conn.execute("SELECT ci_account, max(last_comment_time) FROM ci_comment_days GROUP BY 1"))
    runs = dict(conn.execute("SELECT driver_id, sum(runs) FROM driver_days WHERE day >= ? GROUP BY 1", (since,)))
    out: dict[int, dict[str, Any]] = {}
    for driver_id, account, project, _ in drivers:
        mine = comments.get((account, project), 0)
        others = sorted(((p, n) for (a, p), n in comments.items() if a == account
                         and p not in reported.get(account, {project})), key=lambda x: (-x[1], x[0]))
        out[driver_id] = {
            "days": DAYS, "comments": mine, "no_verdict": max(0, mine - int(runs.get(driver_id, 0))),
            "last_comment": last.get(account),
            "other_projects": [{"project": p, "comments": n} for p, n in others[:OTHER_PROJECTS]],
        }
    return out


def _lines(body: bytes) -> list[str]:
    text = zlib.decompress(body).decode("utf-8", "replace")
    lines, _ = read_comment(text)
    return [_EMAIL.sub("…@…", line.strip())[:LINE_CHARS] + ("…" if len(line.strip()) > LINE_CHARS else "")
            for line in lines[:LINES]]


def latest(conn: sqlite3.Connection, driver_id: int, now: float) -> list[dict[str, Any]]:
    """The newest comments of the driver's CI account on its review project (within :data:`DAYS`, among the
    :data:`SCANNED` newest) that gave the driver no verdict, newest first, with their first lines."""
    row = reads.binding(conn, driver_id)
    if row is None:
        return []
    out = []
    for number, ps, at, url, body, judged in conn.execute(
            """SELECT k.change_number, k.patch_set, k.comment_time, k.review_url, k.body,
                      EXISTS (SELECT 1 FROM verifications v WHERE v.driver_id = ? AND v.change_number = k.change_number
                              AND v.patch_set = k.patch_set AND v.ci_account = k.ci_account
                              AND v.comment_sha256 = k.comment_sha256)
               FROM ci_comments k WHERE k.ci_account = ? AND k.project = ? AND k.comment_time >= ?
               ORDER BY k.comment_time DESC LIMIT ?""",
            (driver_id, row[0], row[1], int(now - DAYS * ci_health.DAY), SCANNED)):
        if judged:
            continue
        out.append({"at": at, "change_number": number, "patch_set": ps, "review_url": url, "lines": _lines(body)})
        if len(out) == LATEST:
            break
    return out
