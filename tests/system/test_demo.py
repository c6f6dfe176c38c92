"""`make demo` end to end: the real daemon, the real test server, the shipped registry."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path


def test_demo_runs_and_records_from_stream_and_backfill(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "driverlog_daemon", "demo", "--work", str(work), "--port", "0", "--events", "120",
         "--pace", "0", "--outage-seconds", "0.3", "--serve-seconds", "0"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "==> the daemon's log" in out and "backfill_done" in out and "dropped_output" in out
    m = re.search(r"verifications (\d+) \(by source \{([^}]*)\}", out)
    assert m and int(m.group(1)) > 0, out
    assert "'backfill'" in m.group(2) and "'stream'" in m.group(2)
    assert "driverlog_backfills_total{trigger=\"dropped-output\"} 1" in out
    recovered = re.search(r"backfills recovered (\d+) results from the (\d+) CI comments the stream did not", out)
    assert recovered and int(recovered.group(1)) >= int(recovered.group(2)) > 0, out  # each lost comment came back
    assert "backfill_gap_exceeds_max_age" not in out  # a first start is no gap cut short
    assert re.search(r"http://127\.0\.0\.1:\d+/ +the status page", out)
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
