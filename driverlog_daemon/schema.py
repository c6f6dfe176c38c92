"""The database's schema and its migrations: each a named, numbered step, recorded in the file.

The file is a public interface (README "Database schema" documents every table). ``PRAGMA user_version`` is the
schema version; ``schema_migrations`` lists the steps applied, with when. Adding a migration means appending one
:class:`Migration` to :data:`MIGRATIONS`; a step runs in one transaction with the version bump and its record.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The database cannot be used (for instance: written by a newer driverlog-daemon)."""


class Migration(NamedTuple):
    version: int  # the schema version the step brings the file to
    name: str
    sql: str


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


# The ingestion ledger: what each backfill cost Gerrit and recovered, and which backfill closed each gap.
_SCHEMA_V3 = """
CREATE TABLE backfills (
    id                 INTEGER PRIMARY KEY,
    server             TEXT NOT NULL,
    trigger            TEXT NOT NULL,
    since              INTEGER NOT NULL,
    started_at         REAL NOT NULL,
    finished_at        REAL NOT NULL,
    queries            INTEGER NOT NULL,
    commands           INTEGER NOT NULL,
    repasses           INTEGER NOT NULL,
    changes_read       INTEGER NOT NULL,
    ci_messages        INTEGER NOT NULL,
    recovered          INTEGER NOT NULL,
    already_present    INTEGER NOT NULL,
    throttled_seconds  REAL NOT NULL DEFAULT 0
);
ALTER TABLE gaps ADD COLUMN closed_by INTEGER REFERENCES backfills (id);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _SCHEMA_V1),
    Migration(2, "cursor_gaps_changes_marks", _SCHEMA_V2),
    Migration(3, "backfill_ledger", _SCHEMA_V3),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  REAL
)"""


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
