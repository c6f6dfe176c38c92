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
import random
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from driverlog_daemon.registry import Registry, load_registry  # noqa: E402

UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"


def pick_registry() -> Path:
    return UPSTREAM if UPSTREAM.exists() else ROOT / "data" / "default_data.json"


# ------------------------------------------------------------------------------------------------ generate

PEOPLE = [(f"dev{i}", f"Developer {i}", f"dev{i}@example.org") for i in range(400)]
WORDS = (
    "the", "fix", "volume", "driver", "retry", "timeout", "race", "condition", "in", "attach", "path", "we",
    "should", "also", "handle", "the", "case", "where", "nova", "calls", "detach", "twice", "please", "add", "a",
    "unit", "test", "for", "this", "and", "a", "release", "note", "nit", "typo", "otherwise", "looks", "good", "to",
    "me", "thanks", "for", "working", "on", "this",
)


def _account(rng: random.Random) -> dict[str, str]:
    u, n, e = rng.choice(PEOPLE)
    return {"name": n, "email": e, "username": u}


def _text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    while length < size:
        w = rng.choice(WORDS)
        out.append(w)
        length += len(w) + 1
        if rng.random() < 0.08:
            out.append("\n\n")
    return " ".join(out)


def _from_pattern(pattern: str, rng: random.Random, build: str) -> str:
    """Turn a CI's pattern into a line it would match: `X \\S+ : SUCCESS` -> `- X <url> : SUCCESS in 1h 2m`."""
    text = pattern.replace("\\S+", f"https://ci.example.org/logs/{build}/").replace(".*", "")
    text = text.replace("\\s+", " ").replace("\\s*", " ").strip("^$")
    text = re.sub(r"\((\w+)\|[^)]*\)", r"\1", text)  # (FAILURE|POST_FAILURE) -> FAILURE
    text = text.replace("\\", "")
    return f"- {text} in {rng.randint(0, 3)}h {rng.randint(1, 59)}m {rng.randint(1, 59)}s"


def _ci_comment(rng: random.Random, drivers: list, ps: int, size: int) -> tuple[str, list[dict[str, str]]]:
    success = rng.random() < 0.8
    vote = "Verified+1" if success else "Verified-1"
    header = "Build succeeded (third-party-check pipeline)." if success else "Build failed (check pipeline)."
    lines = []
    for d in drivers:
        pattern = d.ci.success_pattern if success else d.ci.failure_pattern
        line = _from_pattern(pattern, rng, f"{rng.randint(10, 99)}/{rng.randint(10**5, 10**6)}")
        lines.append(line if re.search(pattern, line) else f"- {pattern}")
    while sum(len(x) for x in lines) < size:
        job = f"tempest-extra-{rng.randint(1, 99)}"
        lines.append(f"- {job} https://ci.example.org/logs/{rng.randint(10**5, 10**6)}/ : "
                     f"{'SUCCESS' if success else rng.choice(['SUCCESS', 'FAILURE'])} in {rng.randint(5, 90)}m")
    style = rng.random()
    if style < 0.15:
        body = "PASSED" if success else "FAILED"
        body += "\n\n" + "\n".join(lines)
    else:
        body = header + "\n\n" + "\n".join(lines)
    comment = f"Patch Set {ps}: {vote}\n\n{body}"
    approvals = [{"type": "Verified", "description": "Verified", "value": "1" if success else "-1", "oldValue": "0"}]
    return comment, approvals


def generate(path: Path, events: int, seed: int, registry: Registry) -> dict[str, int]:
    rng = random.Random(seed)
    accounts = sorted(registry.by_account)
    projects = sorted({d.review_project for ds in registry.by_account.values() for d in ds})
    counts: dict[str, int] = {}
    t = 1_735_689_600  # 2025-01-01
    change_base = 900_000
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(events):
            t += rng.choice((0, 0, 1, 1, 2, 5))
            number = change_base + rng.randint(0, 40_000)
            project = rng.choice(projects) if rng.random() < 0.6 else f"openstack/project-{rng.randint(1, 200)}"
            branch = "master" if rng.random() < 0.85 else rng.choice(["stable/2024.2", "stable/rocky", "stable/zed"])
            ps = rng.randint(1, 12)
            owner = _account(rng)
            change = {
                "project": project, "branch": branch, "id": f"I{rng.getrandbits(160):040x}", "number": number,
                "subject": _text(rng, 50)[:70].replace("\n", " "), "owner": owner,
                "url": f"https://review.example.org/c/{project}/+/{number}",
                "commitMessage": _text(rng, 300), "createdOn": t - 86400, "status": "NEW",
            }
            patch_set = {
                "number": ps, "revision": f"{rng.getrandbits(160):040x}", "parents": [f"{rng.getrandbits(160):040x}"],
                "ref": f"refs/changes/{number % 100:02d}/{number}/{ps}", "uploader": owner, "createdOn": t - 3600,
                "author": owner, "kind": "REWORK", "sizeInsertions": rng.randint(1, 500), "sizeDeletions": -3,
            }
            r = rng.random()
            ev: dict[str, object]
            if r < 0.05:  # a registered CI account reports
                account = rng.choice(accounts)
                drivers = list(registry.by_account[account])
                d0 = drivers[0]
                change["project"] = d0.review_project
                change["url"] = f"https://review.example.org/c/{d0.review_project}/+/{number}"
                chosen = [d for d in drivers if d.review_project == d0.review_project]
                chosen = rng.sample(chosen, k=rng.randint(1, len(chosen)))
                comment, approvals = _ci_comment(rng, chosen, ps, rng.randint(200, 3000))
                ev = {"author": {"name": f"{account} CI", "email": f"{account}@ci.example.org", "username": account},
                      "approvals": approvals, "comment": comment}
                kind = "comment-added"
            elif r < 0.30:
                ev = {"author": _account(rng),
                      "approvals": [{"type": "Code-Review", "description": "Code-Review",
                                     "value": rng.choice(["-1", "0", "1", "2"])}],
                      "comment": f"Patch Set {ps}: Code-Review+1\n\n" + _text(rng, rng.randint(200, 3000))}
                kind = "comment-added"
            elif r < 0.50:
                ev, kind = {"uploader": owner}, "patchset-created"
            elif r < 0.58:
                change["status"] = "MERGED"
                ev, kind = {"submitter": _account(rng), "newRev": f"{rng.getrandbits(160):040x}"}, "change-merged"
            elif r < 0.70:
                ev, kind = {"reviewer": _account(rng), "adder": owner}, "reviewer-added"
            elif r < 0.88:
                ev = {"submitter": _account(rng), "refUpdate": {
                    "oldRev": f"{rng.getrandbits(160):040x}", "newRev": f"{rng.getrandbits(160):040x}",
                    "refName": f"refs/changes/{number % 100:02d}/{number}/meta", "project": project}}
                kind = "ref-updated"
            else:
                ev = {"project": project, "ref": f"refs/changes/{number % 100:02d}/{number}/{ps}",
                      "targetNode": "gerrit-replica-1.example.org", "status": "succeeded",
                      "refStatus": "OK"}
                kind = "ref-replicated"
            if kind not in ("ref-updated", "ref-replicated"):
                ev["patchSet"] = patch_set
                ev["change"] = change
                ev["project"] = change["project"]
                ev["refName"] = f"refs/heads/{branch}"
                ev["changeKey"] = {"id": change["id"]}
            ev["type"] = kind
            ev["eventCreatedOn"] = t
            out.write(json.dumps(ev, separators=(",", ":")))
            out.write("\n")
            counts[kind] = counts.get(kind, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------ contenders


def run_ours(stream: Path, db: Path, registry_path: Path) -> dict[str, object]:
    from driverlog_daemon.pipeline import Pipeline
    from driverlog_daemon.replay import replay
    from driverlog_daemon.store import Store

    registry = load_registry(registry_path)
    with Store(db) as store:
        pipeline = Pipeline(registry, store)
        started = time.perf_counter()
        replay(pipeline, str(stream))
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "lines": pipeline.stats.lines, "recorded": pipeline.stats.recorded}


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


CONTENDERS = {"ours": run_ours, "naive": run_naive, "floor": run_floor}


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
    names = ["floor", "ours"] + ([] if args.skip_naive else ["naive"])
    results = {}
    for name in names:
        results[name] = in_child(name, stream, work / f"{name}.sqlite", registry_path)
    print()
    print(f"{'contender':<10} {'seconds':>9} {'events/s':>12} {'recorded':>9} {'peak RSS':>10}")
    for name in names:
        r = results[name]
        rate = args.events / float(r["seconds"])  # type: ignore[arg-type]
        print(f"{name:<10} {r['seconds']:>9.2f} {rate:>12,.0f} {r['recorded']:>9,} {r['peak_rss_mb']:>8.1f} MB")
    ours = float(results["ours"]["seconds"])  # type: ignore[arg-type]
    print()
    print(f"ours / floor time:   {ours / float(results['floor']['seconds']):.2f}x  (target <= 3x)")  # type: ignore[arg-type]
    if "naive" in results:
        print(f"naive / ours time:   {float(results['naive']['seconds']) / ours:.1f}x  (target >= 30x)")  # type: ignore[arg-type]
    print(f"ours events/s:       {args.events / ours:,.0f}  (target >= 250,000)")
    if args.keep:
        print(f"kept: {work}")
    else:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
