"""`make demo` end to end: the real daemon, the real test server, the shipped registry."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from driverlog_daemon.testing import browser

SHOTS = os.environ.get("DRIVERLOG_SCREENSHOTS")  # a folder (docs/) to refresh the docs' screenshots into


def look(base: str, db: Path, tmp: Path) -> None:
    """The demo's pages at a desktop's and a phone's width: nothing past the edge; screenshots of both."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (driver_id,) = conn.execute("SELECT id FROM drivers WHERE name = 'Acme Volume Driver (FC)'").fetchone()
    finally:
        conn.close()
    with browser.Browser(tmp / "profile") as chromium:
        for name, path in (("status-page", "/"), ("driver-page", f"/drivers/{driver_id}"),
                           ("driver-jobs", f"/drivers/{driver_id}#jobs")):
            for width, suffix in ((1300, ""), (400, "-phone")):
                chromium.open(base + path, width, 1000)
                layout = chromium.layout()
                assert layout["overflowing"] == [] and layout["scroll_width"] <= width, (path, width, layout)
                shot = tmp / f"{name}{suffix}.png"
                chromium.screenshot(shot)
                assert shot.stat().st_size > 20_000
                if SHOTS:
                    shutil.copy(shot, Path(SHOTS) / shot.name)


@pytest.mark.timeout(240)
def test_demo_runs_and_records_from_stream_and_backfill(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "driverlog_daemon", "demo", "--work", str(work), "--port", "0", "--events", "120",
         "--pace", "0", "--outage-seconds", "0.3", "--serve-seconds", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # up to the last URL it serves (the demo's own waits have deadlines)
        lines.append(line)
        if re.search(r"/healthz +health", line):
            break
    base = re.search(r"(http://127\.0\.0\.1:\d+)/ +the status page", "".join(lines))
    if base and browser.CHROMIUM is not None:
        look(base.group(1), work / "driverlog.sqlite", tmp_path)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops the daemon and says so
    rest, _ = proc.communicate(timeout=60)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert base, out
    assert "==> the daemon's log" in out and "backfill_done" in out and "dropped_output" in out
    m = re.search(r"verifications (\d+) \(by source \{([^}]*)\}", out)
    assert m and int(m.group(1)) > 0, out
    assert "'backfill'" in m.group(2) and "'stream'" in m.group(2)
    assert "driverlog_backfills_total{trigger=\"dropped-output\"} 1" in out
    recovered = re.search(r"backfills recovered (\d+) results from the (\d+) CI comments the stream did not", out)
    assert recovered and int(recovered.group(1)) >= int(recovered.group(2)) > 0, out  # each lost comment came back
    assert "backfill_gap_exceeds_max_age" not in out  # a first start is no gap cut short
    conn = sqlite3.connect(work / "driverlog.sqlite")
    try:
        (n,) = conn.execute("SELECT count(*) FROM verifications").fetchone()
        assert n == int(m.group(1))
        (marked,) = conn.execute("SELECT count(DISTINCT driver_id) FROM driver_marks").fetchone()
        assert marked >= 3, out  # the status page shows DriverLog's marks for several drivers
    finally:
        conn.close()
    health = subprocess.run([sys.executable, "-m", "driverlog_daemon", "health", "--database",
                             str(work / "driverlog.sqlite")], capture_output=True, text=True, timeout=60, check=True)
    rows = health.stdout.splitlines()[1:]
    assert rows and all(re.search(r"\d+%.* (no|yes)$", row) for row in rows), health.stdout  # every measure known

    # what Gerrit saw is saved beside the database, and replaying it records what the daemon recorded
    recording = work / "gerrit-events.jsonl"
    assert f"replay {recording}" in out
    replayed = subprocess.run([sys.executable, "-m", "driverlog_daemon", "replay", str(recording), "--database",
                               str(tmp_path / "replayed.sqlite"), "--quiet"],
                              capture_output=True, text=True, timeout=60, check=True)
    assert re.search(rf"verifications: +{n:,} recorded, 0 already present", replayed.stdout), replayed.stdout
