"""Why a CI does not count (docs/health.md): on a real file built by replay, each CI driver's no-verdict count
equals a direct count of its CI account's kept comments on its review project without a verification for it; the
comments on projects none of the account's drivers reports on are listed; the latest comments that gave no
verdict come with their first lines, shortened, e-mail addresses masked, and are shown escaped on the driver page
and in its API record; the day counts survive the upgrade of a version-7 file."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from driverlog_daemon.expose.runtime import Live
from driverlog_daemon.expose.web.app import App
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.registry.load import Registry, load_registry
from driverlog_daemon.source import replay
from driverlog_daemon.store import reads_unjudged, schema
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.store import Store
from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import comment_event, line
from driverlog_daemon.testing.history import history
from driverlog_daemon.testing.http import ThreadedServer
from driverlog_daemon.testing.net import http_get

NOW = int(time.time())
HOSTILE = "<script>alert(1)</script> contact ops@acme.example.org " + "x" * 300


def _file(tmp: Path, registry: Registry) -> Path:
    events = history(registry, days=40, changes=150, end=NOW - 3600, seed=3, ci_rate=0.6)
    odd = [comment_event("acme-storage-ci", f"Patch Set 1:\n\n{HOSTILE}\nsecond line\nthird\nfourth",
                         number=990000 + i, patch_set=1, created_on=NOW - 600 - i) for i in range(4)]
    odd.append(comment_event("acme-storage-ci", "Patch Set 1:\n\nBuild succeeded.", project="openstack/swift",
                             number=990100, patch_set=1, created_on=NOW - 500))
    path = tmp / "stream.jsonl"
    path.write_bytes(b"".join(line(e) for e in [*events, *odd]))
    db = tmp / "d.sqlite"
    with Store(db) as store:
        replay.replay(Pipeline(registry, store), str(path), jobs=1)
    return db


def _direct(db: Path, now: float) -> dict[int, tuple[int, int]]:
    since = (int(now // 86400) - reads_unjudged.DAYS + 1) * 86400
    return {i: (int(c), int(n)) for i, c, n in query(db, """
        SELECT d.id, count(k.id), coalesce(sum(NOT EXISTS (SELECT 1 FROM verifications v WHERE v.driver_id = d.id
            AND (v.change_number, v.patch_set, v.ci_account, v.comment_sha256)
              = (k.change_number, k.patch_set, k.ci_account, k.comment_sha256))), 0)
        FROM drivers d LEFT JOIN ci_comments k ON k.ci_account = d.ci_account AND k.project = d.review_project
            AND k.comment_time >= ?
        WHERE d.ci_account IS NOT NULL GROUP BY d.id""", since)}


def test_no_verdict_equals_a_direct_count_and_the_latest_are_shown(tmp_path: Path) -> None:
    registry = load_registry(DATA)
    db = _file(tmp_path, registry)
    conn = schema.connect(db, readonly=True)
    got = reads_unjudged.counts(conn, NOW)
    direct = _direct(db, NOW)
    assert {i: (u["comments"], u["no_verdict"]) for i, u in got.items()} == direct
    assert sum(n for _, n in direct.values()) >= 8  # the hand-made comments, twice (FC and iSCSI), and history's
    fc = query(db, "SELECT id FROM drivers WHERE name = 'Acme Volume Driver (FC)'")[0][0]
    assert {"project": "openstack/swift", "comments": 1} in got[fc]["other_projects"]
    assert got[fc]["last_comment"] == max(r[0] for r in query(
        db, "SELECT comment_time FROM ci_comments WHERE ci_account = 'acme-storage-ci'"))
    latest = reads_unjudged.latest(conn, fc, NOW)
    conn.close()
    assert [c["change_number"] for c in latest] == [990000, 990001, 990002]
    first = latest[0]["lines"]
    assert len(first) == 3 and first[1:] == ["second line", "third"]
    assert first[0].endswith("…") and len(first[0]) == reads_unjudged.LINE_CHARS + 1 and "ops@" not in first[0]

    app = App(db, lambda: registry, Metrics(), lambda: (True, {}), live=lambda: Live("connected"), max_staleness=0)
    web = ThreadedServer(app, "127.0.0.1", 0)
    web.start()
    try:
        _, _, body = http_get(web.port, f"/api/1.0/drivers/{fc}")
        unjudged = json.loads(body)["driver"]["health"]["unjudged"]
        assert unjudged["no_verdict"] == direct[fc][1] and unjudged["latest"] == latest
        _, _, body = http_get(web.port, "/api/1.0/drivers")
        assert "latest" not in json.loads(body)["drivers"][0]["health"]["unjudged"]  # the driver's own record only
        _, _, page = http_get(web.port, f"/drivers/{fc}")
        text = page.decode()
        assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert f"{direct[fc][1]} of {direct[fc][0]} comments on openstack/cinder matched neither pattern" in text
        assert "openstack/swift (1)" in text
    finally:
        web.stop()


def test_the_day_counts_are_made_for_a_version_7_file(tmp_path: Path) -> None:
    registry = load_registry(DATA)
    db = _file(tmp_path, registry)
    before = query(db, "SELECT * FROM ci_comment_days ORDER BY 1, 2, 3")
    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE ci_comment_days; DROP INDEX ci_comments_recent; "
                       "DELETE FROM schema_migrations WHERE version = 8; PRAGMA user_version = 7;")
    conn.close()
    with Store(db) as store:
        assert schema.schema_version(store.conn) == 8
    assert query(db, "SELECT * FROM ci_comment_days ORDER BY 1, 2, 3") == before and before
