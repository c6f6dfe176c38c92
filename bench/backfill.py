"""What one backfill costs Gerrit on a busy server: SSH commands and pages, and whether it missed anything.

    python bench/backfill.py [--changes N] [--pace S] [--latency S] [--seed S] [--runs R]

The Gerrit SSH test server holds N changes of the registry's review projects, each with CI results of the last
three hours; ``backfill.fetch`` reads them back from three hours ago, as a start backfill would, with
``accounts_per_query`` and ``page_size`` as the daemon uses them, while a thread keeps updating random changes (a
comment every ``--pace`` seconds: each moves its change to the front of ``gerrit query``'s order, as on a busy
server), and each query takes ``--latency`` seconds as on a real server. Prints per run the commands and pages
the backfill used and how many of the CI results in its window it did not return (must be 0). With
``PYTHONPATH`` pointing at another checkout it measures that one. Not a test.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from driverlog_daemon.config import GerritConfig  # noqa: E402
from driverlog_daemon.registry.load import load_registry  # noqa: E402
from driverlog_daemon.source import backfill, ssh  # noqa: E402

try:
    from driverlog_daemon.testing.gerrit import start_in
except ImportError:  # a checkout from before the test server was a package
    from driverlog_daemon.testing.gerrit_server import start_in  # type: ignore[no-redef]

UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"
SHIPPED = ROOT / "data" / "default_data.json"


def comment(author: str, project: str, number: int, ps: int, t: int, text: str) -> dict[str, Any]:
    return {"type": "comment-added", "eventCreatedOn": t, "comment": f"Patch Set {ps}:\n\n{text}",
            "author": {"username": author, "name": author},
            "patchSet": {"number": ps}, "change": {"project": project, "branch": "master", "number": number,
                                                  "id": f"I{number:040d}", "status": "NEW",
                                                  "url": f"https://review.example.org/{number}"}}


def run(seed: int, n_changes: int, pace: float, latency: float) -> tuple[int, int, int, int, int]:
    rng = random.Random(seed)
    registry = load_registry(UPSTREAM if UPSTREAM.exists() else SHIPPED)
    accounts = sorted(registry.ci_accounts)
    by_project: dict[str, list[str]] = {}
    for d in registry.drivers:
        if d.ci is not None:
            by_project.setdefault(d.review_project, []).append(d.ci.account)
    projects = sorted(by_project)
    now = int(time.time())
    since = now - 3 * 3600
    work = Path(tempfile.mkdtemp(prefix="driverlog-bench-backfill-"))
    started = start_in(work)
    server = getattr(started, "server", started)  # an SSHEnv now; a server in older checkouts
    try:
        changes: list[tuple[int, str]] = []
        expected: set[tuple[int, int, str]] = set()
        for i in range(n_changes):
            number, project = 100_000 + i, rng.choice(projects)
            changes.append((number, project))
            t = since + 60 + (i * (3 * 3600 - 600)) // n_changes
            for ps in range(1, rng.randint(2, 4)):
                author = rng.choice(by_project[project])
                server.record_only(comment(author, project, number, ps, t + ps, "- job : SUCCESS in 1h"))
                expected.add((number, ps, author))
        cfg = GerritConfig(host=server.host, port=server.port, username="driverlog",
                           key_file=str(work / "id_ecdsa"), known_hosts=str(work / "known_hosts"))
        client = ssh.connect(cfg)
        stop = threading.Event()

        def traffic() -> None:  # steady updates: each moves a change to the front of the query's order
            k = 0
            while not stop.is_set():
                number, project = rng.choice(changes)
                who = rng.choice(["jdev", "core", rng.choice(by_project[project])])
                server.record_only(comment(who, project, number, 50 + k, int(time.time()), "recheck"))
                k += 1
                stop.wait(pace)

        commands = 0

        def execute(cmd: str) -> bytes:
            nonlocal commands
            commands += 1
            time.sleep(latency)  # a real Gerrit's query takes this long at least: the rows keep moving meanwhile
            out = ssh.run(client, cmd, 60)
            if out.status != 0:
                raise RuntimeError(out.stderr)
            return out.stdout

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        try:
            report = backfill.fetch(execute, accounts, since, projects=projects)
        finally:
            stop.set()
            thread.join()
            client.close()
        got = {(c.change.number, c.patch_set, c.author.username or "") for c in report.comments}
        missed = len(expected - got)
        return commands, report.pages, report.queries, report.changes, missed
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=600)
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between updates while it pages")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds a query takes on the server")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bad = 0
    for r in range(args.runs):
        commands, pages, queries, rows, missed = run(args.seed + r, args.changes, args.pace, args.latency)
        bad += missed > 0
        print(f"run {r + 1}: {commands} commands for {queries} queries ({pages} pages, {rows:,} change rows read), "
              f"{missed} CI results missed")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
