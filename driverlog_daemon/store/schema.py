"""The database's schema and its migrations: each a named, numbered step, recorded in the file.

The file is a public interface (docs/schema.md documents every table). The steps are the SQL files in
``migrations/`` (``0001_initial.sql``, …); ``PRAGMA user_version`` is the schema version, and
``schema_migrations`` lists the steps a file went through, with when. Adding a migration means adding one file; a
step runs in one transaction with the version bump and its record.
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The database cannot be used (for instance: written by a newer driverlog-daemon)."""


class Migration(NamedTuple):
    version: int  # the schema version the step brings the file to
    name: str
    sql: str


MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _migrations() -> tuple[Migration, ...]:
    """The steps in ``migrations/``, one SQL file each, named ``NNNN_name.sql`` and numbered from 1 without a hole."""
    steps = []
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        number, _, name = path.stem.partition("_")
        steps.append(Migration(int(number), name, path.read_text()))
    assert [m.version for m in steps] == list(range(1, len(steps) + 1)), "migrations must be numbered 1, 2, …"
    return tuple(steps)


MIGRATIONS = _migrations()
SCHEMA_VERSION = MIGRATIONS[-1].version

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  REAL
)"""


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the project's settings. ``readonly`` opens with ``mode=ro`` (the web side). A file
    that cannot be a database here is a :class:`StoreError` naming it, in one line."""
    try:
        if not readonly:
            conn = _open(str(path), uri=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn
        uri = Path(path).resolve().as_uri()
        try:
            return _open(f"{uri}?mode=ro", uri=True)
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc) or not _immutable_copy(Path(path)):
                raise
            # Read-only media: a WAL file's reader needs its -shm beside it, which cannot be made there. Nobody can
            # write a file there either, so it cannot change: what SQLite's immutable=1 asks of the caller.
            return _open(f"{uri}?immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {_why(Path(path), exc)}") from None


def _open(target: str, *, uri: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header: is it a database?
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _read_only_media(path: Path) -> bool:
    """Whether ``path`` is on a file system mounted read-only (not merely a directory this user cannot write: its
    owner may be writing the file, and an immutable reader would then read torn pages)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _immutable_copy(path: Path) -> bool:
    """Whether ``path`` is a database file on read-only media, with no -wal beside it holding commits (immutable
    mode would read the file without them: a wrong answer, where refusing is a clear one)."""
    if not path.is_file() or not _read_only_media(path):
        return False
    wal = Path(f"{path}-wal")
    return not wal.exists() or wal.stat().st_size == 0


READ_ONLY = "read-only here: the daemon and replay need to write it (serve, health and export only read)"


def _why(path: Path, exc: sqlite3.Error) -> str:
    """What is wrong with ``path`` as a database, from what SQLite said."""
    if path.is_dir():
        return "is a directory, not a database file"
    text = str(exc)
    if "not a database" in text:
        return "not a SQLite database (a foreign or damaged file: nothing was written to it)"
    if "readonly" in text or "read-only" in text:
        return READ_ONLY
    if "unable to open" in text:
        where = path.parent
        if path.is_file() and _read_only_media(path):  # _immutable_copy refused it: a -wal with commits, or not
            if not Path(f"{path}-wal").is_file():
                return READ_ONLY
            return (f"read-only here with commits in {path.name}-wal beside it, which only a writable place can "
                    f"apply: copy the file and its -wal to a writable place and open the copy")
        if not where.exists():
            return f"cannot be created: its directory {where} does not exist"
        return f"cannot be opened or created (is {where} writable?)"
    return f"cannot be used: {text}"


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


class Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` when the block raises (connections are in autocommit)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def migrate(conn: sqlite3.Connection, path: str = "") -> int:
    """Bring the file to :data:`SCHEMA_VERSION`; refuse a file from a newer version. Returns the old version."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path or 'database'}: schema version {version} is newer than this driverlog-daemon supports "
            f"({SCHEMA_VERSION}); upgrade driverlog-daemon or use another database file"
        )
    with Transaction(conn):
        conn.execute(_MIGRATIONS_TABLE)
        # Files from before steps were recorded: their steps are listed, with no time.
        conn.executemany("INSERT OR IGNORE INTO schema_migrations (version, name, applied_at) VALUES (?, ?, NULL)",
                         [(m.version, m.name) for m in MIGRATIONS if m.version <= version])
    for step in MIGRATIONS[version:]:
        with Transaction(conn):
            # executescript would commit the open transaction first; run statement by statement instead.
            for statement in split_sql(step.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step.version}")
            conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                         (step.version, step.name, time.time()))
    return version


def applied(conn: sqlite3.Connection) -> list[tuple[int, str, float | None]]:
    """(version, name, applied_at) of the steps the file has been through, oldest first."""
    return [(int(v), str(n), t) for v, n, t in
            conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")]


def split_sql(script: str) -> list[str]:
    """A migration's statements, one by one (comment lines dropped)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


# Rows go in as multi-row VALUES statements of 256 rows (the rest in 128, 64, …, 1): SQLite inserts them in one
# call, where executemany would release and retake the GIL around every row and, beside a busy thread (replay's),
# wait for it each time. Fixed sizes keep the prepared statements few and reused (sqlite3 caches them by text;
# one for every batch size would hold megabytes of programs).
ROWS_PER_STATEMENT = 256


def values_statements(head: str, tail: str, width: int,
                      rows: Sequence[Sequence[Any]]) -> Iterator[tuple[str, list[Any]]]:
    """``head VALUES (?, …), (?, …) tail`` statements with their parameters, for ``rows`` of ``width`` values."""
    at, size = 0, ROWS_PER_STATEMENT
    while at < len(rows):
        while size > len(rows) - at:
            size //= 2
        chunk = rows[at:at + size]
        at += size
        yield _values_sql(head, tail, width, size), list(itertools.chain.from_iterable(chunk))


@functools.cache
def _values_sql(head: str, tail: str, width: int, size: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([one] * size)} {tail}"
