"""The SQLite store: schema, migrations, driver sync, and the batch writer.

The file is a public interface (users query it directly); README "Database schema" documents every table.
Writes go through :class:`Store` on one connection, many rows per transaction; readers in other processes
see whole batches only (WAL). A verification is identified by its natural key
``(driver_id, change_number, patch_set, ci_account, comment_sha256)`` and inserted with ``INSERT OR IGNORE``,
so the same comment from the live stream, a backfill and a replay is one row. ``driver_status`` is kept
current by a trigger in the same transaction as each insert.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from driverlog_daemon.model import ChangeFact, Source, Verification
from driverlog_daemon.registry import Registry

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 5000
WRITER_CACHE_KIB = 8192


class StoreError(Exception):
    """The database cannot be used (for instance: written by a newer driverlog-daemon)."""


_SCHEMA_V1 = """
CREATE TABLE drivers (
    id               INTEGER PRIMARY KEY,
    project_id       TEXT NOT NULL,
    vendor           TEXT NOT NULL,
    name             TEXT NOT NULL,
    review_project   TEXT NOT NULL,
    ci_account       TEXT,
    success_pattern  TEXT,
    failure_pattern  TEXT,
    description      TEXT NOT NULL DEFAULT '',
    wiki             TEXT NOT NULL DEFAULT '',
    releases         TEXT NOT NULL DEFAULT '[]',
    first_seen_at    REAL NOT NULL,
    updated_at       REAL NOT NULL,
    removed_at       REAL,
    UNIQUE (project_id, vendor, name)
);
CREATE INDEX drivers_ci_account ON drivers (ci_account);

CREATE TABLE verifications (
    id              INTEGER PRIMARY KEY,
    driver_id       INTEGER NOT NULL REFERENCES drivers (id),
    ci_account      TEXT NOT NULL,
    change_number   INTEGER NOT NULL,
    patch_set       INTEGER NOT NULL,
    comment_sha256  TEXT NOT NULL,
    comment_time    INTEGER NOT NULL,
    result          TEXT NOT NULL CHECK (result IN ('success', 'failure')),
    evidence        TEXT NOT NULL,
    project         TEXT NOT NULL,
    branch          TEXT NOT NULL,
    release         TEXT NOT NULL DEFAULT '',
    change_status   TEXT,
    review_url      TEXT,
    change_id       TEXT,
    received_at     REAL NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('stream', 'backfill', 'replay')),
    UNIQUE (driver_id, change_number, patch_set, ci_account, comment_sha256)
);
CREATE INDEX verifications_driver_time ON verifications (driver_id, comment_time DESC);
CREATE INDEX verifications_change ON verifications (change_number, patch_set);

CREATE TABLE driver_status (
    driver_id                    INTEGER NOT NULL REFERENCES drivers (id),
    release                      TEXT NOT NULL,
    last_verification_id         INTEGER NOT NULL REFERENCES verifications (id),
    last_result                  TEXT NOT NULL,
    last_comment_time            INTEGER NOT NULL,
    last_success_verification_id INTEGER REFERENCES verifications (id),
    last_success_time            INTEGER,
    verifications                INTEGER NOT NULL DEFAULT 0,
    successes                    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (driver_id, release)
);
CREATE INDEX driver_status_release ON driver_status (release);

-- Newest by comment time (then by row id), never by arrival: results may arrive out of order.
CREATE TRIGGER verifications_update_status AFTER INSERT ON verifications
BEGIN
    INSERT INTO driver_status (driver_id, release, last_verification_id, last_result, last_comment_time,
                               last_success_verification_id, last_success_time, verifications, successes)
    VALUES (NEW.driver_id, NEW.release, NEW.id, NEW.result, NEW.comment_time,
            CASE WHEN NEW.result = 'success' THEN NEW.id END,
            CASE WHEN NEW.result = 'success' THEN NEW.comment_time END,
            1, NEW.result = 'success')
    ON CONFLICT (driver_id, release) DO UPDATE SET
        last_verification_id = CASE WHEN NEW.comment_time >= last_comment_time
                                    THEN NEW.id ELSE last_verification_id END,
        last_result = CASE WHEN NEW.comment_time >= last_comment_time
                           THEN NEW.result ELSE last_result END,
        last_comment_time = MAX(last_comment_time, NEW.comment_time),
        last_success_verification_id = CASE
            WHEN NEW.result = 'success' AND (last_success_time IS NULL OR NEW.comment_time >= last_success_time)
            THEN NEW.id ELSE last_success_verification_id END,
        last_success_time = CASE
            WHEN NEW.result = 'success' AND (last_success_time IS NULL OR NEW.comment_time >= last_success_time)
            THEN NEW.comment_time ELSE last_success_time END,
        verifications = verifications + 1,
        successes = successes + (NEW.result = 'success');
END;

CREATE TABLE stream_state (
    server           TEXT PRIMARY KEY,
    last_event_time  INTEGER NOT NULL,
    updated_at       REAL NOT NULL
);

CREATE VIEW driver_ci_status AS
SELECT
    d.id                                            AS driver_id,
    d.project_id                                    AS project_id,
    d.vendor                                        AS vendor,
    d.name                                          AS driver,
    d.ci_account                                    AS ci_account,
    s.release                                       AS release,
    s.last_result                                   AS last_result,
    datetime(s.last_comment_time, 'unixepoch')      AS last_result_at,
    datetime(s.last_success_time, 'unixepoch')      AS last_success_at,
    v.evidence                                      AS evidence,
    v.review_url                                    AS review_url,
    v.change_number                                 AS change_number,
    v.patch_set                                     AS patch_set,
    s.verifications                                 AS verifications,
    s.successes                                     AS successes,
    d.removed_at IS NOT NULL                        AS removed
FROM driver_status s
JOIN drivers d ON d.id = s.driver_id
JOIN verifications v ON v.id = s.last_verification_id;
"""

_MARK_COLUMNS = "driver_id, release, verification_id, result, comment_time, change_number, patch_set, comment_sha256"
# Keep the newest candidate: by comment time, then (for equal times, whatever the arrival order) change number,
# patch set and comment hash. Every candidate only ever adds to the set, so the mark is a running maximum.
_MARK_UPSERT = """
    ON CONFLICT (driver_id, release) DO UPDATE SET
        verification_id = excluded.verification_id, result = excluded.result,
        comment_time = excluded.comment_time, change_number = excluded.change_number,
        patch_set = excluded.patch_set, comment_sha256 = excluded.comment_sha256
    WHERE (excluded.comment_time, excluded.change_number, excluded.patch_set, excluded.comment_sha256)
        > (driver_marks.comment_time, driver_marks.change_number, driver_marks.patch_set,
           driver_marks.comment_sha256)"""
_MARKS_OF_MERGED_CHANGE = f"""
    INSERT INTO driver_marks ({_MARK_COLUMNS})
    SELECT v.driver_id, v.release, v.id, v.result, v.comment_time, v.change_number, v.patch_set, v.comment_sha256
    FROM verifications v
    WHERE v.change_number = NEW.change_number AND v.patch_set = NEW.merged_patch_set AND v.release != ''
    {_MARK_UPSERT};"""

_SCHEMA_V2 = f"""
-- The cursor becomes a low-water mark: last_event_time is the Gerrit time up to which every CI result is proven to
-- be in the database; newest_event_time is the newest event seen. Gaps are the windows not proven yet.
ALTER TABLE stream_state ADD COLUMN newest_event_time INTEGER;
UPDATE stream_state SET newest_event_time = last_event_time;

CREATE TABLE gaps (
    id          INTEGER PRIMARY KEY,
    server      TEXT NOT NULL,
    since       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    opened_at   REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    closed_at   REAL
);
CREATE INDEX gaps_open ON gaps (server, since) WHERE closed_at IS NULL;

-- Change state, for the changes of the registry's review projects. Times are Gerrit's (*_time).
CREATE TABLE changes (
    change_number     INTEGER PRIMARY KEY,
    project           TEXT NOT NULL,
    branch            TEXT NOT NULL,
    status            TEXT CHECK (status IN ('NEW', 'MERGED', 'ABANDONED')),
    status_time       INTEGER NOT NULL DEFAULT 0,
    current_patch_set INTEGER,
    merged_patch_set  INTEGER,
    merged_time       INTEGER,
    last_update_time  INTEGER NOT NULL
);
CREATE INDEX changes_merge_unknown ON changes (change_number) WHERE status = 'MERGED' AND merged_patch_set IS NULL;

-- DriverLog's "CI tested" mark: per driver and release, the newest verification on the patch set that merged.
CREATE TABLE driver_marks (
    driver_id        INTEGER NOT NULL REFERENCES drivers (id),
    release          TEXT NOT NULL,
    verification_id  INTEGER NOT NULL REFERENCES verifications (id),
    result           TEXT NOT NULL,
    comment_time     INTEGER NOT NULL,
    change_number    INTEGER NOT NULL,
    patch_set        INTEGER NOT NULL,
    comment_sha256   TEXT NOT NULL,
    PRIMARY KEY (driver_id, release)
);
CREATE INDEX driver_marks_release ON driver_marks (release);

CREATE TRIGGER verifications_update_mark AFTER INSERT ON verifications
WHEN NEW.release != '' AND EXISTS (SELECT 1 FROM changes c WHERE c.change_number = NEW.change_number
                                                            AND c.merged_patch_set = NEW.patch_set)
BEGIN
    INSERT INTO driver_marks ({_MARK_COLUMNS})
    VALUES (NEW.driver_id, NEW.release, NEW.id, NEW.result, NEW.comment_time, NEW.change_number, NEW.patch_set,
            NEW.comment_sha256)
    {_MARK_UPSERT};
END;

CREATE TRIGGER changes_merged_insert AFTER INSERT ON changes WHEN NEW.merged_patch_set IS NOT NULL
BEGIN {_MARKS_OF_MERGED_CHANGE}
END;

CREATE TRIGGER changes_merged_update AFTER UPDATE OF merged_patch_set ON changes
WHEN NEW.merged_patch_set IS NOT NULL AND NEW.merged_patch_set IS NOT OLD.merged_patch_set
BEGIN {_MARKS_OF_MERGED_CHANGE}
END;

CREATE VIEW driverlog_marks AS
SELECT
    d.id                                            AS driver_id,
    d.project_id                                    AS project_id,
    d.vendor                                        AS vendor,
    d.name                                          AS driver,
    d.ci_account                                    AS ci_account,
    m.release                                       AS release,
    m.result                                        AS result,
    v.evidence                                      AS evidence,
    m.comment_time                                  AS comment_time,
    datetime(m.comment_time, 'unixepoch')           AS comment_at,
    v.review_url                                    AS review_url,
    m.change_number                                 AS change_number,
    m.patch_set                                     AS patch_set,
    datetime(c.merged_time, 'unixepoch')            AS merged_at,
    d.removed_at IS NOT NULL                        AS removed
FROM driver_marks m
JOIN drivers d ON d.id = m.driver_id
JOIN verifications v ON v.id = m.verification_id
LEFT JOIN changes c ON c.change_number = m.change_number;

-- From a version-1 file: what the verifications say of their changes (the status at comment time). A change
-- seen MERGED has an unknown merged patch set until the next backfill asks Gerrit (changes_merge_unknown).
WITH newest AS (
    SELECT change_number, project, branch, change_status, max(comment_time) AS t
    FROM verifications GROUP BY change_number
), seen AS (
    SELECT change_number, max(patch_set) AS ps,
           min(CASE WHEN change_status = 'MERGED' THEN comment_time END) AS merged_by
    FROM verifications GROUP BY change_number
)
INSERT INTO changes (change_number, project, branch, status, status_time, current_patch_set, merged_patch_set,
                     merged_time, last_update_time)
SELECT n.change_number, n.project, n.branch,
       CASE WHEN s.merged_by IS NOT NULL THEN 'MERGED'
            WHEN n.change_status IN ('NEW', 'ABANDONED') THEN n.change_status END,
       n.t, s.ps, NULL, s.merged_by, n.t
FROM newest n JOIN seen s ON s.change_number = n.change_number WHERE true;
"""

#: MIGRATIONS[n] upgrades a file from schema version n to n + 1.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)
assert len(MIGRATIONS) == SCHEMA_VERSION


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the project's settings. ``readonly`` opens with ``mode=ro`` (the web side)."""
    if readonly:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: str = "") -> int:
    """Bring the file to :data:`SCHEMA_VERSION`; refuse a file from a newer version. Returns the old version."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path or 'database'}: schema version {version} is newer than this driverlog-daemon supports "
            f"({SCHEMA_VERSION}); upgrade driverlog-daemon or use another database file"
        )
    for step in range(version, SCHEMA_VERSION):
        with _Transaction(conn):
            # executescript would commit the open transaction first; run statement by statement instead.
            for statement in _split_sql(MIGRATIONS[step]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
    return version


def _split_sql(script: str) -> list[str]:
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


class BatchResult(NamedTuple):
    inserted_success: int
    inserted_failure: int
    already_present: int
    closed_gaps: tuple[tuple[int, str, float], ...] = ()  # (id, reason, opened_at) of the gaps it closed

    @property
    def inserted(self) -> int:
        return self.inserted_success + self.inserted_failure


# Rows go in as multi-row VALUES statements of 256 rows (the rest in 128, 64, …, 1): SQLite inserts them in one
# call, where executemany would release and retake the GIL around every row and, beside a busy thread (replay's),
# wait for it each time. (A JSON array walked by json_each is one call too, but SQLite before 3.45 parses a row's
# JSON again for every ->> column: 20 µs a verification.) Fixed sizes keep the prepared statements few and reused
# (sqlite3 caches them by text; one for every batch size would hold megabytes of programs).
_ROWS_PER_STATEMENT = 256


def _values_statements(head: str, tail: str, width: int,
                       rows: Sequence[Sequence[Any]]) -> Iterator[tuple[str, list[Any]]]:
    """``head VALUES (?, …), (?, …) tail`` statements with their parameters, for ``rows`` of ``width`` values."""
    at, size = 0, _ROWS_PER_STATEMENT
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


#: A verification row's natural key in its unique index's order: driver, change, patch set, CI account, comment.
_NATURAL_KEY_ORDER = operator.itemgetter(0, 2, 3, 1, 4)

_INSERT_VERIFICATIONS = """
    INSERT OR IGNORE INTO verifications
        (driver_id, ci_account, change_number, patch_set, comment_sha256, comment_time, result, evidence, project,
         branch, release, change_status, review_url, change_id, received_at, source)"""


# Facts merge order-independently: a merge is final (MERGED wins, and the merged patch set is set once, as in
# Gerrit); otherwise the status of the newest fact wins (equal times: ABANDONED over NEW, a fixed order); patch
# set numbers and the last update only grow; the merge time is the earliest said (a query row gives an upper
# bound). SQLite's max()/min() of a NULL is NULL, hence coalesce(max(a, b), a, b).
_UPSERT_CHANGES = """
    INSERT INTO changes (change_number, project, branch, status, status_time, current_patch_set, merged_patch_set,
                         merged_time, last_update_time)"""
_UPSERT_CHANGES_TAIL = """
    ON CONFLICT (change_number) DO UPDATE SET
        status = CASE
            WHEN excluded.status IS NULL OR changes.status = 'MERGED' THEN changes.status
            WHEN excluded.status = 'MERGED' OR changes.status IS NULL THEN excluded.status
            WHEN (excluded.status_time, excluded.status = 'ABANDONED')
                 > (changes.status_time, changes.status = 'ABANDONED') THEN excluded.status
            ELSE changes.status END,
        status_time = CASE WHEN excluded.status IS NULL THEN changes.status_time
                           ELSE max(changes.status_time, excluded.status_time) END,
        current_patch_set = coalesce(max(changes.current_patch_set, excluded.current_patch_set),
                                     changes.current_patch_set, excluded.current_patch_set),
        merged_patch_set = coalesce(changes.merged_patch_set, excluded.merged_patch_set),
        merged_time = coalesce(min(changes.merged_time, excluded.merged_time), changes.merged_time,
                               excluded.merged_time),
        last_update_time = max(changes.last_update_time, excluded.last_update_time)"""


#: A ``changes`` row as the upsert takes it: (change_number, project, branch, status, status_time,
#: current_patch_set, merged_patch_set, merged_time, last_update_time).
ChangeRow = tuple[int, str, str, str | None, int, int | None, int | None, int | None, int]


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def merge_change_rows(old: ChangeRow, new: ChangeRow) -> ChangeRow:
    """The upsert's rules (``_UPSERT_CHANGES_TAIL``) in Python: what the row ``old`` becomes when ``new`` arrives.

    Like them, order-independent, so that facts merged here first and then by SQLite end as if SQLite had
    merged each (the property test in test_marks.py compares the two).
    """
    n, project, branch, status, status_time, ps, merged_ps, merged_time, updated = old
    _, _, _, x_status, x_status_time, x_ps, x_merged_ps, x_merged_time, x_updated = new
    if x_status is not None and status != "MERGED" and (
            x_status == "MERGED" or status is None
            or (x_status_time, x_status == "ABANDONED") > (status_time, status == "ABANDONED")):
        status = x_status
    if x_status is not None:
        status_time = max(status_time, x_status_time)
    return (n, project, branch, status, status_time, _max(ps, x_ps),
            merged_ps if merged_ps is not None else x_merged_ps, _min(merged_time, x_merged_time),
            max(updated, x_updated))


class ChangeRows:
    """Change facts merged by change number before they are written: one row a change, however many facts.

    A fact costs SQLite's upsert ~10 µs and this merge ~1 µs; replay keeps merging across its batches.
    """

    __slots__ = ("rows",)

    def __init__(self, facts: Iterable[ChangeFact] = ()) -> None:
        self.rows: dict[int, ChangeRow] = {}
        self.add(facts)

    def add(self, facts: Iterable[ChangeFact]) -> None:
        rows = self.rows
        for n, p, b, s, t, ps, mps, mt in facts:
            row = (n, p, b, s, 0 if s is None else t, ps, mps, mt, t)  # no status said: any later one wins
            old = rows.get(n)
            rows[n] = row if old is None else merge_change_rows(old, row)

    def merge(self, other: ChangeRows) -> None:
        """Add rows merged elsewhere (a replay worker's span): dict operations in C but for the changes in both."""
        rows, new = self.rows, other.rows
        both = rows.keys() & new.keys()
        merged = {n: merge_change_rows(rows[n], new[n]) for n in both}
        rows.update(new)
        rows.update(merged)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[int, ChangeRow]:
        return self.rows

    def __setstate__(self, rows: dict[int, ChangeRow]) -> None:
        self.rows = rows


class Store:
    """The writer's handle on the database. One per process, used from one thread at a time."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 retry_delays: Sequence[float] = (0.05, 0.2, 0.5, 1.0, 2.0)) -> None:
        self.path = str(path)
        self._clock = clock
        self._retry_delays = tuple(retry_delays)
        self.conn = connect(path)
        # 8 MiB of page cache (SQLite's default is 2): the unique index of verifications stays in memory
        # far longer as the file grows (replay of 1M events: 230k -> 290k events/s).
        self.conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        try:
            migrate(self.conn, self.path)
        except BaseException:
            self.conn.close()
            raise
        self._driver_ids = self._load_driver_ids()
        self.write_retries = 0

    @functools.cached_property
    def db(self) -> Any:
        """The connection as a ``sqlite_utils.Database`` (imported on first use)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def checkpoints_every(self, pages: int) -> Iterator[None]:
        """Move the WAL into the database file only every ``pages`` pages while in the block (a bulk import).

        SQLite's default (1,000 pages, 4 MB) checkpoints after nearly every replay batch once the indexes are
        large, copying the same pages over and over: at 1,000,000 events a replay's commits took 5.7 -> 4.2 s.
        The WAL may grow to ``pages`` pages meanwhile; the previous setting is back afterwards.
        """
        previous = int(self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {previous}")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ drivers

    def _load_driver_ids(self) -> dict[tuple[str, str, str], int]:
        """(project_id, vendor, name) -> drivers.id, removed drivers included."""
        return {(p, v, n): i for i, p, v, n in self.conn.execute("SELECT id, project_id, vendor, name FROM drivers")}

    def sync_drivers(self, registry: Registry) -> Mapping[tuple[str, str, str], int]:
        """Make ``drivers`` match the registry: insert new, update changed, mark the missing as removed."""
        now = self._clock()
        present = set()
        with self._transaction():
            # Only the rows that differ are written: a start with an unchanged registry writes none (221 drivers:
            # the first sync of a process 5.8 -> 4.6 ms, then 2.9 -> 1.9 ms).
            stored = {(p, v, n): rest for p, v, n, *rest in self.conn.execute(
                "SELECT project_id, vendor, name, review_project, ci_account, success_pattern, failure_pattern, "
                "description, wiki, releases, removed_at FROM drivers")}
            for d in registry.drivers:
                present.add(d.key)
                row = {
                    "review_project": d.review_project,
                    "ci_account": d.ci.account if d.ci else None,
                    "success_pattern": d.ci.success_pattern if d.ci else None,
                    "failure_pattern": d.ci.failure_pattern if d.ci else None,
                    "description": d.description,
                    "wiki": d.wiki,
                    "releases": json.dumps(list(d.releases)),
                }
                if stored.get(d.key) == [*row.values(), None]:  # the same, and not removed
                    continue
                self.conn.execute(
                    """INSERT INTO drivers (project_id, vendor, name, review_project, ci_account, success_pattern,
                                            failure_pattern, description, wiki, releases, first_seen_at, updated_at)
                       VALUES (:project_id, :vendor, :name, :review_project, :ci_account, :success_pattern,
                               :failure_pattern, :description, :wiki, :releases, :now, :now)
                       ON CONFLICT (project_id, vendor, name) DO UPDATE SET
                           review_project = excluded.review_project, ci_account = excluded.ci_account,
                           success_pattern = excluded.success_pattern, failure_pattern = excluded.failure_pattern,
                           description = excluded.description, wiki = excluded.wiki, releases = excluded.releases,
                           removed_at = NULL, updated_at = :now
                       WHERE (review_project, ci_account, success_pattern, failure_pattern, description, wiki,
                              releases, removed_at)
                          IS NOT (excluded.review_project, excluded.ci_account, excluded.success_pattern,
                                  excluded.failure_pattern, excluded.description, excluded.wiki,
                                  excluded.releases, NULL)""",
                    {"project_id": d.project_id, "vendor": d.vendor, "name": d.name, "now": now, **row},
                )
            ids = self._load_driver_ids()
            gone = [ids[key] for key in ids if key not in present]
            self.conn.executemany(
                "UPDATE drivers SET removed_at = ?, updated_at = ? WHERE id = ? AND removed_at IS NULL",
                [(now, now, i) for i in gone],
            )
        self._driver_ids = ids
        return dict(ids)

    # ------------------------------------------------------------------------------------ verifications

    def record(self, verifications: Iterable[Verification], source: Source,
               cursor: tuple[str, int] | None = None, changes: Iterable[ChangeFact] | ChangeRows = (),
               close: tuple[str, int, int | None] | None = None) -> BatchResult:
        """Insert a batch in one transaction (retried on failure, never dropped) and advance the cursor.

        ``close`` = (server, gap id, newest stream event committed): the batch is a backfill that covered the
        open gaps up to that id; they close in the same transaction as its results.

        ``changes`` are merged into the change state in the same transaction; the marks follow by trigger.
        """
        received_at = self._clock()
        merged = (changes if isinstance(changes, ChangeRows) else ChangeRows(changes)).rows
        # Rows go in in the order of the keys SQLite looks them up by: neighbours in a B-tree follow each other
        # (a verification costs ~15% less at 66,000 rows). Equal keys keep their order (the first one stays).
        change_rows = [merged[n] for n in sorted(merged)]
        ids = self._driver_ids
        by_result: dict[str, list[tuple[Any, ...]]] = {"success": [], "failure": []}
        total = 0
        for v in verifications:
            total += 1
            by_result["success" if v.result == "success" else "failure"].append(
                (ids[v.driver_key], *v[1:], received_at, source))
        for rows in by_result.values():
            rows.sort(key=_NATURAL_KEY_ORDER)
        attempt = 0
        while True:
            try:
                inserted = {"success": 0, "failure": 0}
                with self._transaction():
                    for sql, values in _values_statements(_UPSERT_CHANGES, _UPSERT_CHANGES_TAIL, 9, change_rows):
                        self.conn.execute(sql, values)
                    for result, rows in by_result.items():
                        for sql, values in _values_statements(_INSERT_VERIFICATIONS, "", 16, rows):
                            inserted[result] += max(self.conn.execute(sql, values).rowcount, 0)
                    if cursor is not None:
                        self._advance_cursor(*cursor)
                    closed = self.close_gaps(*close) if close is not None else []
                return BatchResult(inserted["success"], inserted["failure"],
                                   total - inserted["success"] - inserted["failure"], tuple(closed))
            except sqlite3.OperationalError:
                if attempt >= len(self._retry_delays):
                    raise
                self.write_retries += 1
                time.sleep(self._retry_delays[attempt])
                attempt += 1

    def driver_last_times(self) -> list[tuple[str, str, str, str | None, int]]:
        """(project_id, vendor, name, ci_account, newest comment time) of every driver with a verification."""
        return [tuple(r) for r in self.conn.execute(
            """SELECT d.project_id, d.vendor, d.name, d.ci_account, MAX(s.last_comment_time)
               FROM driver_status s JOIN drivers d ON d.id = s.driver_id GROUP BY d.id""")]

    def _advance_cursor(self, server: str, event_time: int) -> None:
        """The stream committed events up to ``event_time``: that is proven, unless an open gap starts earlier."""
        now = self._clock()
        self.conn.execute(
            """INSERT INTO stream_state (server, last_event_time, newest_event_time, updated_at) VALUES (?1, ?2, ?2, ?3)
               ON CONFLICT (server) DO UPDATE SET
                   newest_event_time = max(coalesce(newest_event_time, 0), excluded.newest_event_time)""",
            (server, event_time, now))
        self._prove(server, event_time, now)

    def _prove(self, server: str, up_to: int, now: float) -> None:
        """Move the cursor to ``up_to``, but never across an open gap, and never back."""
        self.conn.execute(
            """UPDATE stream_state SET
                   last_event_time = max(last_event_time, min(?2, coalesce(
                       (SELECT min(since) FROM gaps WHERE server = ?1 AND closed_at IS NULL), ?2))),
                   updated_at = ?3
               WHERE server = ?1""", (server, up_to, now))

    def open_gap(self, server: str, since: int, reason: str) -> int:
        """Record a window whose CI results are not proven to be here (in its own transaction); its id."""
        with self._transaction():
            self.conn.execute(
                """INSERT INTO stream_state (server, last_event_time, newest_event_time, updated_at)
                   VALUES (?1, ?2, NULL, ?3) ON CONFLICT (server) DO NOTHING""", (server, since, self._clock()))
            cur = self.conn.execute("INSERT INTO gaps (server, since, reason, opened_at) VALUES (?, ?, ?, ?)",
                                    (server, since, reason, self._clock()))
            gap_id = int(cur.lastrowid or 0)
        return gap_id

    def close_gaps(self, server: str, up_to_id: int, stream_newest: int | None) -> list[tuple[int, str, float]]:
        """In the current transaction: close the open gaps with id <= ``up_to_id`` (a backfill covered them) and
        prove what the stream has committed since. Returns (id, reason, opened_at) of each gap closed."""
        now = self._clock()
        closed = [(int(i), str(r), float(o)) for i, r, o in self.conn.execute(
            "SELECT id, reason, opened_at FROM gaps WHERE server = ? AND closed_at IS NULL AND id <= ?",
            (server, up_to_id))]
        self.conn.execute("UPDATE gaps SET closed_at = ? WHERE server = ? AND closed_at IS NULL AND id <= ?",
                          (now, server, up_to_id))
        if stream_newest is not None:
            self._prove(server, stream_newest, now)
        return closed

    def gap_failed(self, server: str, up_to_id: int, error: str) -> None:
        with self._transaction():
            self.conn.execute("UPDATE gaps SET attempts = attempts + 1, last_error = ? "
                              "WHERE server = ? AND closed_at IS NULL AND id <= ?", (error[:300], server, up_to_id))

    def cursor(self, server: str) -> int | None:
        row = self.conn.execute("SELECT last_event_time FROM stream_state WHERE server = ?", (server,)).fetchone()
        return None if row is None else int(row[0])

    def newest_event_time(self, server: str) -> int | None:
        row = self.conn.execute("SELECT newest_event_time FROM stream_state WHERE server = ?", (server,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


class Gap(NamedTuple):
    id: int
    since: int  # Gerrit's time
    reason: str
    opened_at: float  # the daemon's time
    attempts: int
    last_error: str | None


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


def summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """Counts a person wants to see first: rows per table, results by source, newest verification."""
    out: dict[str, Any] = {}
    for table in ("drivers", "verifications", "driver_status", "changes", "driver_marks", "stream_state"):
        out[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    out["by_source"] = dict(conn.execute("SELECT source, count(*) FROM verifications GROUP BY source").fetchall())
    out["by_result"] = dict(conn.execute("SELECT result, count(*) FROM verifications GROUP BY result").fetchall())
    return out
