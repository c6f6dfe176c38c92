"""A database file as another process sees it: read on a connection of its own; and files of older schemas."""

from __future__ import annotations

import sqlite3
import subprocess
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


READ_ONLY_MOUNT = 'mount --bind -o ro "$0" "$0" && exec "$@"'


def read_only_media(folder: Path) -> list[str] | None:
    """A command prefix that runs a program with ``folder`` mounted read-only, as a copy on read-only media is (in
    a mount namespace of its own: the rest of the machine still sees it writable, and root cannot write it either,
    unlike a mode that root ignores); None where this machine cannot make one (no ``unshare``, no privilege)."""
    for unshare in (["unshare", "-m"], ["unshare", "-rm"]):  # as root; else in a user namespace of its own
        try:
            probe = subprocess.run([*unshare, "sh", "-c", READ_ONLY_MOUNT, str(folder), "sh", "-c",
                                    'touch "$0/.probe" 2>/dev/null && exit 3 || exit 0', str(folder)],
                                   capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return [*unshare, "sh", "-c", READ_ONLY_MOUNT, str(folder)]
    return None
