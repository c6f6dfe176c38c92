"""CSV exports of the verifications and of the marks' history, for the web tier (``/export/*.csv``) and the CLI
(``driverlog-daemon export``): RFC 4180, a header row, streamed from one read transaction in constant memory.

Gerrit's text is attacker-controlled (anyone can make a CI post a comment that quotes them), and a spreadsheet
runs a cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a formula: such a text cell is
written with a leading ``'``, which spreadsheets show as text (OWASP's "CSV injection" advice).
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

from driverlog_daemon.parse.bounds import utc_text

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK_ROWS = 500  # rows a chunk: a few tens of kilobytes on the wire


class Export(NamedTuple):
    columns: tuple[str, ...]
    sql: str  # the query, with {where} for the filters
    time_column: str  # what since/until bound


EXPORTS = {
    "verifications": Export(
        ("id", "driver_id", "project_id", "vendor", "driver", "ci_account", "change_number", "patch_set",
         "comment_time", "result", "evidence", "project", "branch", "release", "change_status", "review_url",
         "source"),
        """SELECT v.id, v.driver_id, d.project_id, d.vendor, d.name, v.ci_account, v.change_number, v.patch_set,
                  v.comment_time, v.result, v.evidence, v.project, v.branch, v.release, v.change_status,
                  v.review_url, v.source
           FROM verifications v JOIN drivers d ON d.id = v.driver_id {where} ORDER BY v.id""",
        "v.comment_time"),
    "marks": Export(
        ("transition_id", "driver_id", "project_id", "vendor", "driver", "release", "from", "to", "at",
         "change_number", "patch_set", "comment_time", "evidence", "review_url"),
        """SELECT t.id, t.driver_id, d.project_id, d.vendor, d.name, t.release, t.from_result, t.to_result, t.at,
                  t.change_number, t.patch_set, t.comment_time, v.evidence, v.review_url
           FROM mark_transitions t JOIN drivers d ON d.id = t.driver_id JOIN verifications v ON v.id = t.verification_id
           {where} ORDER BY t.at, t.id""",
        "t.at"),
}
TIME_COLUMNS = frozenset({"comment_time", "at"})  # written as ISO 8601 UTC

#: ``jobs``: each job line of the comments of each driver's CI on its review project (docs/health.md#jobs), read from
#: the kept comments as the jobs API reads them, in comment order
JOB_COLUMNS = ("driver_id", "project_id", "vendor", "driver", "ci_account", "change_number", "patch_set",
               "comment_time", "job", "result", "duration_seconds", "log_url", "review_url")
_JOBS_SQL = """
    SELECT d.id, d.project_id, d.vendor, d.name, k.ci_account, k.change_number, k.patch_set, k.comment_time,
           k.review_url, k.body
    FROM ci_comments k JOIN drivers d ON d.ci_account = k.ci_account AND d.review_project = k.project
                                     AND d.removed_at IS NULL
    {where} ORDER BY k.comment_time, k.id, d.id"""


def safe_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, made text; anything else as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def iso(epoch: int | None) -> str:
    return "" if epoch is None else utc_text(epoch, "%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str, name: str) -> int:
    """``since``/``until``: epoch seconds, a date (``2026-11-30``, midnight UTC) or an ISO 8601 time (UTC when it
    names no zone). Raises ValueError naming the parameter."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} must be epoch seconds or an ISO 8601 date or time, not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def window(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    """The ``since`` and ``until`` of an export, as given (either may be absent or empty), in epoch seconds; a bad
    one is a ValueError naming it."""
    return (parse_time(since, "since") if since else None), (parse_time(until, "until") if until else None)


def as_csv(conn: sqlite3.Connection, kind: str, *, driver_id: int | None = None, since: int | None = None,
        until: int | None = None) -> Iterator[bytes]:
    """The whole export as CSV chunks (the web tier's answer, the CLI's output), read lazily from ``conn``."""
    if kind == "jobs":
        return csv_chunks(JOB_COLUMNS, job_rows(conn, driver_id=driver_id, since=since, until=until))
    return csv_chunks(EXPORTS[kind].columns, rows(conn, kind, driver_id=driver_id, since=since, until=until))


def job_rows(conn: sqlite3.Connection, *, driver_id: int | None = None, since: int | None = None,
             until: int | None = None) -> Iterator[tuple[Any, ...]]:
    """The ``jobs`` export's rows, read lazily (one comment's job lines at a time)."""
    import zlib

    from driverlog_daemon.match.jobs import read_jobs

    where, params = [], []
    for clause, value in (("d.id = ?", driver_id), ("k.comment_time >= ?", since), ("k.comment_time < ?", until)):
        if value is not None:
            where.append(clause)
            params.append(value)
    for *head, at, review_url, body in conn.execute(
            _JOBS_SQL.format(where=("WHERE " + " AND ".join(where)) if where else ""), params):
        for job in read_jobs(zlib.decompress(body).decode("utf-8", "replace"))[0]:
            yield tuple(map(safe_cell, (*head, iso(at), *job, review_url)))


def rows(conn: sqlite3.Connection, kind: str, *, driver_id: int | None = None, since: int | None = None,
         until: int | None = None) -> Iterator[tuple[Any, ...]]:
    """The export's rows (cells made safe, times as ISO 8601), read lazily from ``conn``."""
    export = EXPORTS[kind]
    where, params = [], []
    if driver_id is not None:
        where.append(("v" if kind == "verifications" else "t") + ".driver_id = ?")
        params.append(driver_id)
    if since is not None:
        where.append(f"{export.time_column} >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{export.time_column} < ?")
        params.append(until)
    sql = export.sql.format(where=("WHERE " + " AND ".join(where)) if where else "")
    times = [i for i, c in enumerate(export.columns) if c in TIME_COLUMNS]
    for row in conn.execute(sql, params):
        cells = list(map(safe_cell, row))
        for i in times:
            cells[i] = iso(row[i])
        yield tuple(cells)


def csv_chunks(columns: Iterable[str], records: Iterable[tuple[Any, ...]]) -> Iterator[bytes]:
    """The header and the rows as RFC 4180 CSV (CRLF, fields quoted when they need it), in chunks of UTF-8."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for n, record in enumerate(records, start=1):
        writer.writerow(record)
        if n % CHUNK_ROWS == 0:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")
