"""Ingest benchmark: our replay vs a naive baseline vs reading the file, on the same generated stream.

    python bench/ingest.py [--events N] [--seed S] [--stream FILE] [--rounds R] [--naive-rounds R] [--skip-naive]
                           [--keep]

Generates (fixed seed) a realistic `gerrit stream-events` recording: patchset-created, comment-added from
people and from the CI accounts of the upstream registry (../shared/driverlog, else data/), change-merged,
ref-updated, reviewer-added, ref-replicated; about 5% of lines are CI comments of 200-3000 bytes written the
way CIs write them. Each contender runs in its own process (so peak RSS is its own), R times, interleaved; the
table prints the best and the median seconds, events/s, the ratios and peak RSS. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from driverlog_daemon.registry.load import Registry

UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"


def pick_registry() -> Path:
    return UPSTREAM if UPSTREAM.exists() else ROOT / "data" / "default_data.json"


# ------------------------------------------------------------------------------------------------ generate

def generate(path: Path, events: int, seed: int, registry: Registry) -> dict[str, int]:
    from driverlog_daemon.testing.samples import sample_events

    counts: dict[str, int] = {}
    with open(path, "w", encoding="utf-8") as out:
        for ev in sample_events(registry, events, seed=seed, start=1_735_689_600):
            out.write(json.dumps(ev, separators=(",", ":")))
            out.write("\n")
            kind = str(ev["type"])
            counts[kind] = counts.get(kind, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------ contenders


def run_naive(stream: Path, db: Path, registry_path: Path) -> dict[str, object]:
    """What one would write first: json.loads every line, every CI driver's patterns, a commit per row."""
    drivers = [(f"{d['project_id']}/{d['vendor']}/{d['name']}", d["ci"]["id"], d.get("repo") or d["project_id"],
                d["ci"]["success_pattern"], d["ci"]["failure_pattern"])
               for d in json.loads(registry_path.read_bytes())["drivers"] if "ci" in d]
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE v (driver TEXT, change INTEGER, ps INTEGER, author TEXT, result TEXT, evidence TEXT,"
                 " comment TEXT, UNIQUE (driver, change, ps, author, comment))")
    lines = recorded = 0
    with open(stream, "rb") as f:
        for raw in f:
            lines += 1
            ev = json.loads(raw)
            if ev.get("type") != "comment-added":
                continue
            for key, account, project, success, failure in drivers:
                if ev["author"].get("username") != account or ev["change"]["project"] != project:
                    continue
                body = re.sub(r"^Patch Set \d+:", "", ev["comment"]).strip()
                for line in body.split("\n"):
                    if not line.strip():
                        continue
                    verdict = ("success" if re.search(success, line)
                               else "failure" if re.search(failure, line) else None)
                    if verdict:
                        conn.execute("INSERT OR IGNORE INTO v VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     (key, ev["change"]["number"], ev["patchSet"]["number"], account, verdict, line,
                                      ev["comment"]))
                        conn.commit()
                        recorded += 1
                        break
    conn.close()
    return {"lines": lines, "recorded": recorded}


FLOOR = """
import sys
lines = 0
with open(sys.argv[1], "rb") as f:
    for _ in f:
        lines += 1
print(lines)
"""


def command(name: str, stream: Path, db: Path, registry_path: Path) -> list[str]:
    """The whole process each contender runs: interpreter start, imports and all."""
    py = sys.executable
    ours = [str(Path(py).with_name("driverlog-daemon")), "replay", str(stream), "--database", str(db),
            "--registry", str(registry_path), "--quiet"]
    return {
        "floor": [py, "-c", FLOOR, str(stream)],
        "ours": ours,
        "ours-1": [*ours, "--jobs", "1"],
        "naive": [py, __file__, "--naive", str(stream), str(db), str(registry_path)],
    }[name]


# A small launcher that forks the command: Linux carries a process's peak RSS across exec, so a command started
# straight from this (large) process would report ours as its own peak. It prints the command's own peak.
LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\npeak-rss-kib {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of its largest process) of one whole command; its output goes to ``log``."""
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", LAUNCH, *cmd], stdout=out, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - started  # the launcher's own start (~20 ms) is not the command's:
    seconds -= LAUNCHER_SECONDS
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    rss_kib = int(proc.stderr.decode().rsplit("peak-rss-kib ", 1)[1])
    return seconds, rss_kib / 1024


LAUNCHER_SECONDS = 0.0


def launcher_seconds(runs: int = 15) -> float:
    """The launcher's own cost (a Python start and a fork), measured on ``true``: subtracted from every way."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", LAUNCH, "true"], check=True, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def recorded(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        table = "verifications" if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'verifications'").fetchone() else "v"
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def startup(registry_path: Path, work: Path, runs: int = 15) -> tuple[float, float, float]:
    """Median wall seconds of ``python -c pass``, ``driverlog-daemon --help`` and a replay of an empty file."""
    empty = work / "empty.jsonl"
    empty.write_bytes(b"")
    daemon = str(Path(sys.executable).with_name("driverlog-daemon"))
    cmds = [[sys.executable, "-c", "pass"], [daemon, "--help"],
            [daemon, "replay", str(empty), "--database", str(work / "empty.sqlite"), "--registry", str(registry_path),
             "--quiet"]]
    times: list[list[float]] = [[], [], []]
    for _ in range(runs):  # interleaved, so that the machine's moods hit all three alike
        for i, cmd in enumerate(cmds):
            started = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[i].append(time.perf_counter() - started)
    return tuple(statistics.median(t) for t in times)  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--keep", action="store_true", help="keep the generated stream and databases")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the (slow) naive baseline")
    parser.add_argument("--stream", type=Path, help="use this recording instead of generating one")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each way, interleaved; the best and the median are printed (default 3)")
    parser.add_argument("--naive-rounds", type=int, help="runs of the naive way (default: --rounds)")
    parser.add_argument("--naive", nargs=3, metavar=("STREAM", "DB", "REGISTRY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive:
        print(run_naive(*map(Path, args.naive)))
        return 0

    from driverlog_daemon.registry.load import load_registry

    registry_path = pick_registry()
    registry = load_registry(registry_path)
    work = Path(tempfile.mkdtemp(prefix="driverlog-bench-"))
    # As pip installs a package: its modules compiled (here PYTHONDONTWRITEBYTECODE may be set, and an editable
    # install would otherwise compile them at every start); the registry's check remembered in a cache of our own.
    compileall.compile_dir(ROOT / "driverlog_daemon", quiet=1)
    os.environ["DRIVERLOG_CACHE_DIR"] = str(work / "cache")
    stream = args.stream or work / "stream.jsonl"
    print(f"registry: {registry_path} ({registry.summary()})")
    if args.stream is None:
        t0 = time.perf_counter()
        counts = generate(stream, args.events, args.seed, registry)
        print(f"stream:   {args.events:,} events, {stream.stat().st_size / 1e6:,.1f} MB "
              f"({stream.stat().st_size / args.events:,.0f} B/line), generated in {time.perf_counter() - t0:.1f} s")
        print("          " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    with open(stream, "rb") as f:
        events = sum(1 for _ in f)
    python, help_, empty = startup(registry_path, work)
    print(f"start-up (median of 15): python -c pass {python * 1e3:.0f} ms, driverlog-daemon --help "
          f"{help_ * 1e3:.0f} ms, replay of an empty file {empty * 1e3:.0f} ms (target <= 100 ms)")
    global LAUNCHER_SECONDS
    LAUNCHER_SECONDS = launcher_seconds()
    names = ["floor", "ours", "ours-1"] + ([] if args.skip_naive else ["naive"])
    # Each way several times, interleaved (floor, ours, ours-1, naive, floor, …): this machine's speed swings by
    # up to 2x between minutes, and within a round all ways meet the same mood. The best run is what the code
    # costs; the median says how much the minute mattered.
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = dict.fromkeys(names, 0.0)
    rows_by_way: dict[str, int] = {}
    naive_rounds = args.rounds if args.naive_rounds is None else args.naive_rounds
    for round_ in range(max(args.rounds, naive_rounds)):
        for name in names:
            if round_ >= (naive_rounds if name == "naive" else args.rounds):
                continue
            db = work / f"{name}-{round_}.sqlite"
            seconds, rss = run(command(name, stream, db, registry_path), work / f"{name}.log")
            times[name].append(seconds)
            peaks[name] = max(peaks[name], rss)
            rows_by_way[name] = 0 if name == "floor" else recorded(db)
            for leftover in work.glob(f"{name}-{round_}.sqlite*"):
                leftover.unlink()
    notes = {"floor": "python: read the file line by line, nothing else",
             "ours": f"driverlog-daemon replay (--jobs {len(os.sched_getaffinity(0))}, the CPUs)",
             "ours-1": "driverlog-daemon replay --jobs 1",
             "naive": "json.loads every line, every CI driver's re.search, a commit per row"}
    print()
    print(f"{events:,} events, each way a whole process (start-up included), best and median of its runs:")
    print(f"{'way':<8} {'runs':>4} {'best s':>7} {'median s':>9} {'events/s':>11} {'recorded':>9} {'peak RSS':>9}")
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in names:
        print(f"{name:<8} {len(times[name]):>4} {best[name]:>7.2f} {median[name]:>9.2f} {events / best[name]:>11,.0f} "
              f"{rows_by_way[name]:>9,} {peaks[name]:>6.1f} MB  {notes[name]}")
    print()
    for label, t in (("best", best), ("median", median)):
        line = (f"{label + ':':<8} ours / floor {t['ours'] / t['floor']:5.2f}x "
                f"(one process {t['ours-1'] / t['floor']:.2f}x; target <= 3x)")
        if "naive" in t:
            line += f", naive / ours {t['naive'] / t['ours']:5.1f}x (one process {t['naive'] / t['ours-1']:.1f}x; " \
                    "target >= 30x)"
        print(line)
    if len({rows for name, rows in rows_by_way.items() if name != "floor"}) != 1:
        print("WARNING: the ways recorded different numbers of verifications")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
