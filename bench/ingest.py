"""Ingest benchmark: our replay vs a naive baseline vs reading the file, on the same generated stream.

    python bench/ingest.py [--events N] [--seed S] [--keep]

Generates (fixed seed) a realistic `gerrit stream-events` recording: patchset-created, comment-added from
people and from the CI accounts of the upstream registry (../shared/driverlog, else data/), change-merged,
ref-updated, reviewer-added, ref-replicated; about 5% of lines are CI comments of 200-3000 bytes written the
way CIs write them. Each contender runs in its own process (so peak RSS is its own) and the table prints
events/s, the ratios and peak RSS. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from driverlog_daemon.registry import Registry, load_registry  # noqa: E402
from driverlog_daemon.testing.samples import sample_events  # noqa: E402

UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"


def pick_registry() -> Path:
    return UPSTREAM if UPSTREAM.exists() else ROOT / "data" / "default_data.json"


# ------------------------------------------------------------------------------------------------ generate

def generate(path: Path, events: int, seed: int, registry: Registry) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(path, "w", encoding="utf-8") as out:
        for ev in sample_events(registry, events, seed=seed, start=1_735_689_600):
            out.write(json.dumps(ev, separators=(",", ":")))
            out.write("\n")
            kind = str(ev["type"])
            counts[kind] = counts.get(kind, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------ contenders


def run_ours(stream: Path, db: Path, registry_path: Path, jobs: int = 0) -> dict[str, object]:
    from driverlog_daemon.pipeline import Pipeline
    from driverlog_daemon.replay import default_jobs, replay
    from driverlog_daemon.store import Store

    registry = load_registry(registry_path)
    with Store(db) as store:
        pipeline = Pipeline(registry, store)
        started = time.perf_counter()
        replay(pipeline, str(stream), jobs=jobs or default_jobs())
        seconds = time.perf_counter() - started
    import resource

    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "lines": pipeline.stats.lines, "recorded": pipeline.stats.recorded,
            "worker_rss_mb": workers, "jobs": jobs or default_jobs()}


def run_ours_single(stream: Path, db: Path, registry_path: Path) -> dict[str, object]:
    return run_ours(stream, db, registry_path, jobs=1)


def run_naive(stream: Path, db: Path, registry_path: Path) -> dict[str, object]:
    """What one would write first: json.loads every line, every CI driver's patterns, a commit per row."""
    registry = load_registry(registry_path)
    drivers = [d for d in registry.drivers if d.ci]
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE v (driver TEXT, change INTEGER, ps INTEGER, author TEXT, result TEXT, evidence TEXT,"
                 " UNIQUE (driver, change, ps, author, evidence))")
    started = time.perf_counter()
    lines = recorded = 0
    with open(stream, "rb") as f:
        for raw in f:
            lines += 1
            ev = json.loads(raw)
            if ev.get("type") != "comment-added":
                continue
            for d in drivers:
                assert d.ci is not None
                if ev["author"].get("username") != d.ci.account or ev["change"]["project"] != d.review_project:
                    continue
                body = re.sub(r"^Patch Set \d+:", "", ev["comment"]).strip()
                for line in body.split("\n"):
                    if not line.strip():
                        continue
                    verdict = ("success" if re.search(d.ci.success_pattern, line)
                               else "failure" if re.search(d.ci.failure_pattern, line) else None)
                    if verdict:
                        conn.execute("INSERT OR IGNORE INTO v VALUES (?, ?, ?, ?, ?, ?)",
                                     ("/".join(d.key), ev["change"]["number"], ev["patchSet"]["number"],
                                      d.ci.account, verdict, line))
                        conn.commit()
                        recorded += 1
                        break
    seconds = time.perf_counter() - started
    conn.close()
    return {"seconds": seconds, "lines": lines, "recorded": recorded}


def run_floor(stream: Path, db: Path, registry_path: Path) -> dict[str, object]:
    started = time.perf_counter()
    lines = 0
    with open(stream, "rb") as f:
        for _ in f:
            lines += 1
    return {"seconds": time.perf_counter() - started, "lines": lines, "recorded": 0}


CONTENDERS = {"ours": run_ours, "ours-1": run_ours_single, "naive": run_naive, "floor": run_floor}


def in_child(name: str, stream: Path, db: Path, registry_path: Path) -> dict[str, object]:
    """Run a contender in a forked process; its result plus its own peak RSS."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            result = CONTENDERS[name](stream, db, registry_path)
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        data = r.read()
    _, status, usage = os.wait4(pid, 0)
    if status != 0 or not data:
        raise SystemExit(f"{name} failed (status {status})")
    result: dict[str, object] = json.loads(data)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--keep", action="store_true", help="keep the generated stream and databases")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the (slow) naive baseline")
    args = parser.parse_args()

    registry_path = pick_registry()
    registry = load_registry(registry_path)
    work = Path(tempfile.mkdtemp(prefix="driverlog-bench-"))
    stream = work / "stream.jsonl"
    t0 = time.perf_counter()
    counts = generate(stream, args.events, args.seed, registry)
    size = stream.stat().st_size
    print(f"registry: {registry_path} ({registry.summary()})")
    print(f"stream:   {args.events:,} events, {size / 1e6:,.1f} MB ({size / args.events:,.0f} B/line), "
          f"generated in {time.perf_counter() - t0:.1f} s")
    print("          " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    names = ["floor", "ours", "ours-1"] + ([] if args.skip_naive else ["naive"])
    results = {}
    for name in names:
        results[name] = in_child(name, stream, work / f"{name}.sqlite", registry_path)
    print()
    print(f"{'contender':<10} {'seconds':>9} {'events/s':>12} {'recorded':>9} {'peak RSS':>10}  notes")
    for name in names:
        r = results[name]
        rate = args.events / float(r["seconds"])  # type: ignore[arg-type]
        note = {"floor": "read the file line by line, nothing else",
                "naive": "json.loads every line, every CI driver's re.search, a commit per row",
                "ours-1": "driverlog-daemon replay --jobs 1"}.get(name, "")
        if name == "ours":
            note = f"driverlog-daemon replay --jobs {r['jobs']} (largest worker {r['worker_rss_mb']:.1f} MB)"
        print(f"{name:<10} {r['seconds']:>9.2f} {rate:>12,.0f} {r['recorded']:>9,} {r['peak_rss_mb']:>8.1f} MB  {note}")
    ours = float(results["ours"]["seconds"])  # type: ignore[arg-type]
    print()
    one = float(results["ours-1"]["seconds"])  # type: ignore[arg-type]
    floor = float(results["floor"]["seconds"])  # type: ignore[arg-type]
    print(f"ours / floor time:   {ours / floor:.2f}x  (one process: {one / floor:.2f}x; target <= 3x)")
    if "naive" in results:
        naive = float(results["naive"]["seconds"])  # type: ignore[arg-type]
        print(f"naive / ours time:   {naive / ours:.1f}x  (one process: {naive / one:.1f}x; target >= 30x)")
    print(f"ours events/s:       {args.events / ours:,.0f}  (one process: {args.events / one:,.0f}; target >= 250,000)")
    if args.keep:
        print(f"kept: {work}")
    else:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
