"""A/B of ``driverlog-daemon replay``: the same recording replayed by another tree (a worktree of an older commit)
and by this checkout, alternately, each run a whole process; prints each run's seconds and the best of each side.

    git worktree add /tmp/before <commit>
    python bench/ingest.py --keep            # or any recording; --keep prints where the stream stays
    python bench/ab_replay.py --before /tmp/before --stream STREAM [--rounds 3] [--jobs 1 2]

The older tree is put first on ``PYTHONPATH``, so the same interpreter and dependencies run both. Not a test: it
asserts nothing (docs/performance.md has the figures it gave).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other tree (a worktree)")
    parser.add_argument("--stream", type=Path, required=True, help="the recording both replay")
    parser.add_argument("--registry", type=Path, default=ROOT.parent / "shared" / "driverlog" / "default_data.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    registry = args.registry if args.registry.exists() else ROOT / "data" / "default_data.json"
    daemon = str(Path(sys.executable).with_name("driverlog-daemon"))
    work = Path(tempfile.mkdtemp(prefix="driverlog-ab-"))
    env = {**os.environ, "DRIVERLOG_CACHE_DIR": str(work / "cache"), "DRIVERLOG_CONFIG": os.devnull}
    best: dict[tuple[int, str], float] = {}
    for jobs in args.jobs:
        for _ in range(args.rounds):
            for side, tree in (("before", args.before), ("after", ROOT)):
                db = work / f"{side}.sqlite"
                for leftover in work.glob(f"{side}.sqlite*"):
                    leftover.unlink()
                started = time.perf_counter()
                subprocess.run([daemon, "replay", str(args.stream), "--database", str(db), "--registry",
                                str(registry), "--quiet", "--jobs", str(jobs)], check=True, stdout=subprocess.DEVNULL,
                               env={**env, "PYTHONPATH": str(tree.resolve())})
                took = time.perf_counter() - started
                best[(jobs, side)] = min(took, best.get((jobs, side), took))
                print(f"--jobs {jobs} {side:<6} {took:6.2f} s", flush=True)
    for jobs in args.jobs:
        print(f"best, --jobs {jobs}: before {best[(jobs, 'before')]:.2f} s, after {best[(jobs, 'after')]:.2f} s "
              f"({best[(jobs, 'after')] / best[(jobs, 'before')] - 1:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
