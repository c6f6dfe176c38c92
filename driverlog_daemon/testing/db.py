"""A database file as another process sees it: read on a connection of its own; and files of older schemas."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from driverlog_daemon.store import schema


def query(db: Path | str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a read-only connection of its own (as any other process would read the file)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def count(db: Path | str, table: str = "verifications") -> int:
    return int(query(db, f"SELECT count(*) FROM {table}")[0][0])


def released_file(path: Path, version: int) -> sqlite3.Connection:
    """A database file at schema ``version`` as that version was released (its migrations run by hand, no later
    one), open for the test to fill the way that version's daemon would have."""
    conn = sqlite3.connect(path, isolation_level=None)
    for step in schema.MIGRATIONS[:version]:
        for statement in schema.split_sql(step.sql):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def write_merged_history(conn: sqlite3.Connection, d: Any, rows: list[tuple[int, int, str, int]]) -> None:
    """Into a file of an older schema, with plain SQL: driver ``d`` as drivers.id 1 and, for each (change number,
    comment time, result, merge time), its verification on patch set 1 of the change, merged at that patch set."""
    conn.execute("INSERT INTO drivers (id, project_id, vendor, name, review_project, ci_account, first_seen_at, "
                 "updated_at) VALUES (1, ?, ?, ?, ?, ?, 0, 0)",
                 (d.project_id, d.vendor, d.name, d.review_project, d.ci.account))
    for number, t, result, merged_at in rows:
        conn.execute("""INSERT INTO verifications (driver_id, ci_account, change_number, patch_set, comment_sha256,
                        comment_time, result, evidence, project, branch, release, received_at, source)
                        VALUES (1, ?, ?, 1, ?, ?, ?, 'e', ?, 'master', 'Gazpacho', 0, 'stream')""",
                     (d.ci.account, number, str(number) * 64, t, result, d.review_project))
        conn.execute("""INSERT INTO changes (change_number, project, branch, status, status_time, current_patch_set,
                        merged_patch_set, merged_time, last_update_time)
                        VALUES (?, ?, 'master', 'MERGED', ?, 1, 1, ?, ?)""",
                     (number, d.review_project, merged_at, merged_at, merged_at))
