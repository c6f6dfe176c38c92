"""Soak: the fault suite's scenario with random fault schedules, run after run.

    python bench/soak.py [--runs N] [--seed S] [--keep]

Each run starts a fresh Gerrit SSH test server, database and ``driverlog-daemon run``, streams 1,500-3,000
generated events with 6-16 random faults (drops, mid-line drops, stalls, an outage, a silently dead stream,
``kill -9``, ``kill -9`` during a backfill, a backfill whose connection drops half-way) and a random clock skew of
up to 4 hours either way, while a webhook receiver of its own answers 500 now and then, hangs past the timeout,
is down through an outage and holds a delivery when the daemon is killed; and prints per run what was lost, doubled
or unexpected against a reference implementation of the rules, and the mark transitions the receiver did not get
(or got wrong: a bad signature, one delivery id with two bodies, out of order). Exits 1 if any run lost or doubled
anything.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from driverlog_daemon.testing.faults import FaultRun, Scenario  # noqa: E402

UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"
SHIPPED = ROOT / "data" / "default_data.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--registry", type=Path, default=SHIPPED, help="default: the shipped registry")
    parser.add_argument("--keep", action="store_true", help="keep every run's folder (database, log)")
    args = parser.parse_args()
    bad = transitions = requests = 0
    for i in range(args.runs):
        seed = args.seed + i
        scenario = Scenario.random(seed)
        work = Path(tempfile.mkdtemp(prefix=f"driverlog-soak-{seed}-"))
        run = FaultRun(work, scenario, args.registry, say=lambda _: None)
        try:
            outcome = run.run()
        finally:
            run.close()
        ok = outcome.ok  # nothing lost, doubled or unexpected, status, gaps and webhook deliveries as they should be
        bad += not ok
        transitions += outcome.transitions
        requests += outcome.deliveries
        print(f"run {i + 1:>3} seed {seed:>4} skew {scenario.skew:+6d} s  {'ok  ' if ok else 'FAIL'} {outcome.line()}",
              flush=True)
        if not ok:
            print(f"         missing e.g. {outcome.missing_examples}; webhook {outcome.webhook_problems[:3]}; "
                  f"kept {work}", flush=True)
        elif not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if bad:
        print(f"{bad} of {args.runs} runs failed")
    else:
        print(f"{args.runs} of {args.runs} runs: 0 lost, 0 doubled; {transitions} mark transitions, every one "
              f"delivered to the webhook receiver ({requests} requests)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
