"""The database as its users browse it: Datasette with deploy/datasette/metadata.yml, over real HTTP."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driverlog_daemon.registry.load import load_registry
from driverlog_daemon.testing import DATA, ROOT
from driverlog_daemon.testing.net import free_port
from driverlog_daemon.testing.samples import sample_events

METADATA = ROOT / "deploy" / "datasette" / "metadata.yml"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database built the way users build one from a recording: ``driverlog-daemon replay``."""
    tmp = tmp_path_factory.mktemp("datasette")
    recording = tmp / "stream.jsonl"
    start = int(time.time()) - 20 * 86400  # three weeks ago: every CI account is silent for more than 7 days
    with recording.open("w") as out:
        for ev in sample_events(load_registry(DATA), 3000, seed=5, start=start, ci_share=0.2):
            out.write(json.dumps(ev, separators=(",", ":")) + "\n")
    db = tmp / "driverlog.sqlite"
    subprocess.run([sys.executable, "-m", "driverlog_daemon", "replay", str(recording), "--database", str(db),
                    "--registry", str(DATA), "--quiet"], check=True, capture_output=True, timeout=60)
    conn = sqlite3.connect(db)  # a webhook's outbox: one delivered, one failing, for the first two transitions
    with conn:
        for n, (tid, driver_id, release, at) in enumerate(conn.execute(
                "SELECT id, driver_id, release, at FROM mark_transitions ORDER BY at LIMIT 2").fetchall()):
            conn.execute("""INSERT INTO webhook_outbox (hook, kind, transition_id, driver_id, release, at, body,
                            queued_at, attempts, next_attempt_at, last_status, last_error, delivered_at)
                            VALUES ('chat', 'transition', ?, ?, ?, ?, '{}', ?, 1, ?, ?, ?, ?)""",
                         (tid, driver_id, release, at, start, start, 204 if n == 0 else 500,
                          None if n == 0 else "HTTP 500: oops", start if n == 0 else None))
    conn.close()
    return db


def metadata() -> dict[str, Any]:
    return dict(yaml.safe_load(METADATA.read_text())["databases"]["driverlog"])


def test_metadata_describes_every_table_view_and_column(database: Path) -> None:
    conn = sqlite3.connect(database)
    objects = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    described = metadata()["tables"]
    assert sorted(described) == objects
    for name in objects:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]
        assert list(described[name]["columns"]) == columns, name
        assert described[name]["description"]
        assert all(described[name]["columns"].values()), name
    conn.close()


@pytest.fixture(scope="module")
def datasette(database: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "datasette", "serve", str(database), "-m", str(METADATA),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/versions.json", timeout=2).close()
                break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    stderr = proc.stderr.read() if proc.stderr else b""
                    raise AssertionError(f"datasette did not start: {stderr!r}") from exc
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return dict(json.load(response))


def test_every_canned_query_answers_json(datasette: str, database: Path) -> None:
    conn = sqlite3.connect(database)
    failing = conn.execute("SELECT count(*) FROM driverlog_marks WHERE result = 'failure'").fetchone()[0]
    history = conn.execute("SELECT count(*) FROM verifications v JOIN drivers d ON d.id = v.driver_id "
                           "WHERE d.name = 'Acme Volume Driver (FC)'").fetchone()[0]
    accounts = {a for (a,) in conn.execute("SELECT DISTINCT ci_account FROM drivers WHERE ci_account IS NOT NULL")}
    now = int(time.time())
    transitions = conn.execute("SELECT count(*) FROM mark_transitions").fetchone()[0]
    successes = dict(conn.execute("SELECT driver_id, max(comment_time) FROM verifications WHERE result = 'success' "
                                  "GROUP BY driver_id").fetchall())
    drivers = conn.execute("SELECT id, name, review_project FROM drivers WHERE ci_account IS NOT NULL "
                           "AND removed_at IS NULL").fetchall()
    silent = sum(1 for i, _, _ in drivers if successes.get(i, 0) < now - 14 * 86400)
    merged = conn.execute("SELECT change_number, project, merged_patch_set FROM changes WHERE status = 'MERGED' "
                          "AND merged_patch_set IS NOT NULL AND merged_time >= ?", (now - 30 * 86400,)).fetchall()
    verified = set(conn.execute("SELECT driver_id, change_number, patch_set FROM verifications").fetchall())
    fc = next(i for i, name, _ in drivers if name == "Acme Volume Driver (FC)")
    fc_project = next(p for i, _, p in drivers if i == fc)
    missed = sum(1 for c, p, ps in merged if p == fc_project and (fc, c, ps) not in verified)
    covering = sum(1 for i, _, project in drivers if any(p == project for _, p, _ in merged))
    backlog = conn.execute("SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL").fetchone()[0]
    conn.close()
    assert failing > 0 and history > 0 and transitions > 0
    params = {"driver_history": {"driver": "Acme Volume Driver (FC)"},
              "missed_changes": {"driver": "Acme Volume Driver (FC)"}}
    counts = {}
    for name in metadata()["queries"]:
        query = urllib.parse.urlencode({"_shape": "objects", **params.get(name, {})})
        body = get_json(f"{datasette}/driverlog/{name}.json?{query}")
        assert body.get("ok", True), body
        counts[name] = len(body["rows"])
        if name == "silent_ci_accounts":
            assert {r["ci_account"] for r in body["rows"]} == accounts
    assert counts == {"failing_marks": failing, "silent_ci_accounts": len(accounts), "driver_history": history,
                      "silent_cis": silent, "coverage": covering, "missed_changes": missed,
                      "recent_transitions": min(100, transitions), "webhook_backlog": backlog}
    assert backlog == 1


def test_descriptions_are_served(datasette: str) -> None:
    body = get_json(f"{datasette}/-/metadata.json")
    assert "DriverLog's CI tested mark" in body["databases"]["driverlog"]["tables"]["driver_marks"]["description"]
