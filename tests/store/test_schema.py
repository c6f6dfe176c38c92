"""The schema and its migrations: a fresh file, a reopened one, one from a newer version, a version-1 file upgraded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from driverlog_daemon.model import ChangeFact
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import reads, schema
from driverlog_daemon.store.schema import MIGRATIONS, SCHEMA_VERSION, StoreError, schema_version
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing.db import released_file
from driverlog_daemon.testing.events import PROJECT, T
from driverlog_daemon.testing.site import verification


def test_fresh_file_gets_current_schema_wal_and_pragmas(store: Store) -> None:
    assert schema_version(store.conn) == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    tables = set(store.db.table_names())
    assert {"drivers", "verifications", "driver_status", "stream_state"} <= tables
    assert "driver_ci_status" in store.db.view_names()


def test_reopening_does_not_migrate_again(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "d.sqlite"
    with Store(path) as s:
        s.sync_drivers(registry)
        s.commit(Batch("stream", [verification(registry)]))
    with Store(path) as s:
        assert s.conn.execute("SELECT count(*) FROM verifications").fetchone()[0] == 1


def test_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1} is newer than this driverlog-daemon "
                                         rf"supports \({SCHEMA_VERSION}\)"):
        Store(path)


def test_a_version_1_file_upgrades_in_place_and_derives_change_state(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "v1.sqlite"
    conn = released_file(path, 1)
    d = next(d for d in registry.drivers if d.ci and d.review_project == PROJECT)
    conn.execute("INSERT INTO drivers (id, project_id, vendor, name, review_project, ci_account, first_seen_at, "
                 "updated_at) VALUES (1, ?, ?, ?, ?, ?, 0, 0)", (d.project_id, d.vendor, d.name, PROJECT,
                                                                d.ci.account if d.ci else None))
    rows = [(1, 1, "NEW", T, "success", "Caracal"), (1, 2, "MERGED", T + 50, "failure", "Caracal"),
            (2, 1, "ABANDONED", T + 10, "success", "Epoxy")]
    for number, ps, change_status, t, result, release in rows:
        conn.execute("""INSERT INTO verifications (driver_id, ci_account, change_number, patch_set, comment_sha256,
                        comment_time, result, evidence, project, branch, release, change_status, review_url,
                        received_at, source) VALUES (1, 'acme-storage-ci', ?, ?, ?, ?, ?, 'e', ?, 'master', ?, ?,
                        'https://r/1', 0, 'stream')""",
                     (number, ps, f"{number}{ps}" * 32, t, result, PROJECT, release, change_status))
    conn.close()

    with Store(path) as s:
        assert schema_version(s.conn) == SCHEMA_VERSION
        changes = s.conn.execute("SELECT change_number, status, current_patch_set, merged_patch_set, merged_time "
                                 "FROM changes ORDER BY change_number").fetchall()
        assert changes == [(1, "MERGED", 2, None, T + 50), (2, "ABANDONED", 1, None, None)]
        assert reads.unknown_merges(s.conn) == [1]  # the next backfill asks Gerrit which patch set merged
        assert s.conn.execute("SELECT count(*) FROM driver_marks").fetchone()[0] == 0
        # what that backfill learns: a merged row whose current patch set is 2
        s.commit(Batch("backfill", [], changes=[ChangeFact(1, PROJECT, "master", "MERGED", T + 60, 2, 2, T + 60)]))
        assert reads.unknown_merges(s.conn) == []
        assert s.conn.execute("SELECT release, result, change_number, patch_set, merged_at FROM driverlog_marks"
                              ).fetchall() == [("Caracal", "failure", 1, 2, "2026-05-28 20:27:30")]


def test_every_step_is_recorded_by_name_and_an_older_file_gets_its_record(tmp_path: Path, registry: Registry) -> None:
    fresh = tmp_path / "fresh.sqlite"
    with Store(fresh) as s:
        steps = schema.applied(s.conn)
    assert [(v, n) for v, n, _ in steps] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(t is not None for _, _, t in steps)
    # a version-1 file from before steps were recorded: step 1 is listed without a time, step 2 runs and is timed
    old = tmp_path / "old.sqlite"
    released_file(old, 1).close()
    with Store(old) as s:
        (v1, name1, t1), *later = schema.applied(s.conn)
        assert (v1, name1, t1) == (1, MIGRATIONS[0].name, None)
        assert [(v, n) for v, n, _ in later] == [(m.version, m.name) for m in MIGRATIONS[1:]]
        assert all(t is not None for _, _, t in later)
        assert schema_version(s.conn) == SCHEMA_VERSION
