from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.registry.load import load_registry
from driverlog_daemon.source import replay as replay_mod
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.store import Store
from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.db import count, query
from driverlog_daemon.testing.events import DEEP_LINE, ci_event, comment_event, line, other_event, poison_events

CLI = [sys.executable, "-m", "driverlog_daemon"]


def recording(n_ci: int = 5, start: int = 1_750_000_000) -> bytes:
    out = []
    for i in range(n_ci):
        out.append(line(other_event("patchset-created", start + 3 * i)))
        text = f"Patch Set 2: Verified+1\n\nBuild succeeded.\n\n- acme-cinder-fc https://ci/{i} : SUCCESS in 1h"
        out.append(line(comment_event(comment=text, number=1000 + i, patch_set=2, created_on=start + 3 * i + 1)))
        out.append(line(comment_event(author="jdev", comment="lgtm", created_on=start + 3 * i + 2)))
    out.append(b"this is not json\n")
    return b"".join(out)


def run_replay(tmp_path: Path, source: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "replay", source, "--database", str(tmp_path / "d.sqlite"), "--registry", str(DATA)],
                          input=stdin.decode() if stdin is not None else None, capture_output=True,
                          text=True, timeout=60, check=False)


def rows(db: Path) -> list[tuple[object, ...]]:
    return query(db, "SELECT change_number, result, source FROM verifications ORDER BY change_number")


def test_replay_records_and_summarises(tmp_path: Path) -> None:
    f = tmp_path / "stream.jsonl"
    f.write_bytes(recording())
    proc = run_replay(tmp_path, str(f))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "lines read:            16 " in out
    assert "comment-added 10" in out and "patchset-created 5" in out
    assert "CI comments:           5 (0 matched no pattern)" in out
    assert "verifications:         5 recorded, 0 already present" in out
    assert "malformed lines:       invalid_json 1" in out
    assert "events/s" in out
    assert rows(tmp_path / "d.sqlite") == [(1000 + i, "success", "replay") for i in range(5)]
    # logged with its excerpt, through the configured processor chain (structlog is set up on first use):
    # one JSON object a line, as on journald (stderr is not a terminal)
    logged = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    assert [(e["event"], e["level"], e["reason"]) for e in logged] == [("malformed_line", "warning", "invalid_json")]
    assert "timestamp" in logged[0] and logged[0]["excerpt"] == "this is not json"


def test_replay_twice_adds_nothing(tmp_path: Path) -> None:
    f = tmp_path / "stream.jsonl"
    f.write_bytes(recording())
    assert run_replay(tmp_path, str(f)).returncode == 0
    second = run_replay(tmp_path, str(f))
    assert "verifications:         0 recorded, 5 already present" in second.stdout
    assert len(rows(tmp_path / "d.sqlite")) == 5


def test_replay_gzip_and_stdin(tmp_path: Path) -> None:
    gz = tmp_path / "stream.jsonl.gz"
    gz.write_bytes(gzip.compress(recording(3)))
    assert "3 recorded" in run_replay(tmp_path, str(gz)).stdout
    assert "0 recorded, 3 already present" in run_replay(tmp_path, "-", recording(3)).stdout


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_replay(tmp_path, str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 1 and "nope.jsonl: file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_interrupt_keeps_committed_batches_and_says_how_far(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    proc = subprocess.Popen([*CLI, "replay", "-", "--database", str(db), "--registry", str(DATA), "--batch-rows", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    first = recording(4)
    proc.stdin.write(first + b"x" * (1 << 20) + b"\n")  # fill one block so it is processed now
    proc.stdin.flush()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if db.exists() and os.path.getsize(db) and _count(db) == 4:
            break
        time.sleep(0.05)
    assert _count(db) == 4
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(input=recording(2, start=1_760_000_000), timeout=20)
    assert proc.returncode == 130, err
    assert b"interrupted after" in out and b"everything before that point is committed" in out
    assert _count(db) >= 4


def _count(db: Path) -> int:
    try:
        return count(db)
    except sqlite3.OperationalError:  # not created yet
        return -1


def _in_many_spans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_ci: int) -> Path:
    """A recording of ``n_ci`` CI results that replay hands to its workers in many small spans (cut at line ends)."""
    monkeypatch.setattr(replay_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(replay_mod, "PARALLEL_SPAN_BYTES", 2000)
    f = tmp_path / "stream.jsonl"
    f.write_bytes(recording(n_ci))
    return f


def test_worker_processes_give_the_same_result_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = _in_many_spans(tmp_path, monkeypatch, 40)
    registry = load_registry(DATA)
    results = []
    for jobs in (1, 2):
        with Store(tmp_path / f"j{jobs}.sqlite") as store:
            pipeline = Pipeline(registry, store)
            report = replay_mod.replay(pipeline, str(f), jobs=jobs, batch_rows=7)
            s = pipeline.stats
            results.append((s.lines, dict(s.by_type), dict(s.malformed), s.recorded, report.bytes_read,
                            rows(tmp_path / f"j{jobs}.sqlite")))
    assert results[0] == results[1]
    assert results[0][3] == 40 and results[0][4] == f.stat().st_size


def _spied_forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the workers replay forks (os.fork itself runs unchanged)."""
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_a_failing_worker_is_an_error_with_its_traceback_and_no_worker_outlives_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = _in_many_spans(tmp_path, monkeypatch, 40)
    real_examine = replay_mod.examine

    def examine(scanner: Any, registry: Any, block: bytes, start: int = 0, end: int | None = None) -> Any:
        if start:  # in the workers (forked after this is patched): a span not at the start of its mapping fails
            raise ValueError("boom in a worker")
        return real_examine(scanner, registry, block, start, end)

    monkeypatch.setattr(replay_mod, "examine", examine)
    pids = _spied_forks(monkeypatch)
    with Store(tmp_path / "d.sqlite") as store, \
            pytest.raises(RuntimeError, match=r"(?s)replay worker .* failed.*ValueError: boom in a worker"):
        replay_mod.replay(Pipeline(load_registry(DATA), store), str(f), jobs=2, batch_rows=7)
    assert len(pids) == 2 and all(_reaped(pid) for pid in pids)


def test_an_interrupted_parallel_replay_keeps_its_commits_and_stops_its_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = _in_many_spans(tmp_path, monkeypatch, 200)
    pids = _spied_forks(monkeypatch)
    with Store(tmp_path / "d.sqlite") as store:
        pipeline = Pipeline(load_registry(DATA), store)
        real_absorb = pipeline.absorb
        absorbed = []

        def absorb(outcome: object, into: object) -> None:
            real_absorb(outcome, into)  # type: ignore[arg-type]
            absorbed.append(1)
            if len(absorbed) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, while the workers are busy

        monkeypatch.setattr(pipeline, "absorb", absorb)
        report = replay_mod.replay(pipeline, str(f), jobs=2, batch_rows=1)
        assert report.interrupted and 0 < report.bytes_read < f.stat().st_size
        assert pipeline.stats.recorded == _count(tmp_path / "d.sqlite") > 0
    assert len(pids) == 2 and all(_reaped(pid) for pid in pids)


def test_a_short_replay_imports_only_what_it_uses(tmp_path: Path) -> None:
    """Start-up: a replay with nothing to do loads no schema checker, logger, metrics, decoder or SSH library (nor
    dataclasses, whose classes cost 0.05 s to create: the replay path uses named tuples and plain classes; nor
    shutil, which argparse imports for the terminal's width unless told it, nor the workers' pickle; nor what only
    webhook deliveries need: http.client, ssl, email, random)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    env = {**os.environ, "DRIVERLOG_CACHE_DIR": str(tmp_path / "cache")}
    args = ["replay", str(empty), "--database", str(tmp_path / "d.sqlite"), "--registry", str(DATA), "--quiet"]
    subprocess.run([*CLI, *args], env=env, check=True, capture_output=True, timeout=60)  # remembers the registry
    probe = ("import sys\nfrom driverlog_daemon.cli import main\nassert main(sys.argv[1:]) == 0\n"
             "heavy = {'jsonschema', 'structlog', 'prometheus_client', 'msgspec', 'paramiko', 'sqlite_utils',"
             " 'multiprocessing', 'concurrent', 'tomllib', 'dataclasses', 'inspect', 'shutil', 'pickle',"
             " 'http', 'ssl', 'email', 'random'}\n"
             "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", probe, *args], env=env, check=True, capture_output=True, text=True,
                         timeout=60).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_poison_lines_cost_only_themselves_in_replay(tmp_path: Path, jobs: str) -> None:
    # Each of these once aborted replay with a traceback and nothing committed.
    t = 1_750_000_000
    poison = poison_events(500, t)
    out, good = [], []
    for i, (event, _) in enumerate(poison * 40):  # past one worker's span with --jobs 2
        out.append(line(event))
        out.append(line(ci_event(100 + i, t + i)))
        good.append(100 + i)
    out.append(DEEP_LINE)
    f = tmp_path / "poison.jsonl"
    f.write_bytes(b"".join(out))
    proc = subprocess.run([*CLI, "replay", str(f), "--database", str(tmp_path / "d.sqlite"), "--registry",
                           str(DATA), "--jobs", jobs], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [r[0] for r in rows(tmp_path / "d.sqlite")] == good
    for reason in {r for _, r in poison} | {"too_deep"}:
        assert reason in proc.stdout, (reason, proc.stdout)
