"""What answering from Gerrit's whole history costs: a first start, then a registry change, against one DriverLog
poll.

    python bench/history.py [--days D] [--changes N] [--ci-rate R] [--seed S] [--query-limit L]

The Gerrit SSH test server holds D days of history (N changes with their patch sets, CI results, rechecks and
merges; ``testing/history.py``) for DriverLog's upstream registry with three current releases (the shipped
registry when ../shared is absent). The daemon's service starts on an empty database with the defaults and no
query ceiling, first with a registry the maintainers then fix: four CI bindings without their account, one CI's
success pattern broken, one driver that later leaves. Once the first import is done, the fixed registry is
applied as a SIGHUP would. For both it prints the queries and SSH commands sent to Gerrit, the time, and how
many of DriverLog's marks (worked out from the events, apart from the daemon) the file holds, beside the
queries of one DriverLog poll (CI bindings x branches: each active release's stable branch, and master). Not a
test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from driverlog_daemon.config import Config, DatabaseConfig, GerritConfig, RegistryConfig  # noqa: E402
from driverlog_daemon.daemon.service import Service  # noqa: E402
from driverlog_daemon.registry.load import Registry, load_registry  # noqa: E402
from driverlog_daemon.source.stream import Backoff  # noqa: E402
from driverlog_daemon.testing.gerrit import start_in  # noqa: E402
from driverlog_daemon.testing.history import driverlog_marks, history, poll_cost  # noqa: E402

UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"
SHIPPED = ROOT / "data" / "default_data.json"
CURRENT = [{"id": "Flamingo", "wiki": "https://wiki.openstack.org/wiki/Flamingo", "start": "2025-Apr-02",
            "active": True, "series": "2025.2"},
           {"id": "Gazpacho", "wiki": "https://wiki.openstack.org/wiki/Gazpacho", "start": "2025-Oct-01",
            "active": True, "series": "2026.1"},
           {"id": "Hibiscus", "wiki": "https://wiki.openstack.org/wiki/Hibiscus", "start": "2026-Apr-01",
            "active": True, "series": "2026.2"}]


def registries() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the registry first applied, the fixed one): the fixed one binds four more drivers to CI accounts of
    their own, repairs a success pattern, and drops a driver."""
    fixed = json.loads((UPSTREAM if UPSTREAM.exists() else SHIPPED).read_text())
    if UPSTREAM.exists():
        fixed["releases"] += CURRENT
    unbound = [d for d in fixed["drivers"] if "ci" not in d and "ci_id" not in d][:4]
    for i, d in enumerate(unbound):
        d["ci"] = {"id": f"new-vendor-ci-{i}", "success_pattern": rf"new-vendor-{i} \S+ : SUCCESS",
                   "failure_pattern": rf"new-vendor-{i} \S+ : FAILURE"}
    first = copy.deepcopy(fixed)
    for d in first["drivers"]:
        if d["name"] in {u["name"] for u in unbound} and d["project_id"] in {u["project_id"] for u in unbound}:
            d.pop("ci", None)
    patterned = next(d for d in first["drivers"] if "ci" in d and "success_pattern" in d["ci"])
    patterned["ci"]["success_pattern"] = "never matches anything"
    leaving = next(d for d in fixed["drivers"] if "ci" in d and d is not patterned)
    fixed["drivers"].remove(leaving)
    return first, fixed


def marks_held(db: Path, registry: Registry, events: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(DriverLog's marks for the active releases, those the file holds the same, those older than 90 days)."""
    import sqlite3

    active = {r.id for r in registry.releases if r.active}
    wanted = {k: v for k, v in driverlog_marks(events, registry).items() if k[3] in active}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    got = {(p, v, n, r): (c, ps, sha, res) for p, v, n, r, c, ps, sha, res in conn.execute(
        """SELECT d.project_id, d.vendor, d.name, m.release, m.change_number, m.patch_set, m.comment_sha256, m.result
           FROM driver_marks m JOIN drivers d ON d.id = m.driver_id WHERE d.removed_at IS NULL""")}
    conn.close()
    same = sum(1 for k, m in wanted.items() if got.get(k) == (m.change_number, m.patch_set, m.sha256, m.result))
    return len(wanted), same, sum(1 for m in wanted.values() if m.comment_time < time.time() - 90 * 86400)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--changes", type=int, default=4000)
    parser.add_argument("--ci-rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--query-limit", type=int, default=500, help="rows a query answers at most (queryLimit)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="driverlog-bench-history-"))
    os.environ["DRIVERLOG_CACHE_DIR"] = str(work / "cache")
    first_doc, fixed_doc = registries()
    (work / "registry.json").write_text(json.dumps(first_doc))
    (work / "fixed.json").write_text(json.dumps(fixed_doc))
    first, fixed = load_registry(work / "registry.json"), load_registry(work / "fixed.json")
    server = start_in(work).server
    server.index.query_limit = args.query_limit
    generated = copy.deepcopy(fixed_doc)  # the history has the fixed bindings' results, and the leaving driver's
    generated["drivers"] += [d for d in first_doc["drivers"]
                             if (d["project_id"], d["vendor"], d["name"]) not in {x.key for x in fixed.drivers}]
    (work / "generated.json").write_text(json.dumps(generated))
    events = history(load_registry(work / "generated.json"), days=args.days, changes=args.changes,
                     end=int(time.time()) - 3600, seed=args.seed, ci_rate=args.ci_rate)
    for event in events:
        server.record_only(event)
    print(f"registry: {first.summary()}; {sum(1 for r in first.releases if r.active)} active releases")
    print(f"history:  {len(events):,} events over {args.days} days, {args.changes:,} changes, at most "
          f"{args.query_limit} rows a query")
    config = Config(gerrit=GerritConfig(host=server.host, port=server.port, username="bench",
                                        key_file=str(work / "id_ecdsa"), known_hosts=str(work / "known_hosts"),
                                        max_queries_per_minute=0),
                    registry=RegistryConfig(str(work / "registry.json")),
                    database=DatabaseConfig(str(work / "d.sqlite")))
    service = Service(config, backoff=Backoff(base=0.01, cap=0.1), poll_interval=0.05, http=False)
    service.start()

    def queries() -> int:
        return sum(1 for c in server.commands if c.startswith("gerrit query"))

    def settled() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if (service.listener is not None and service.listener.state == "connected" and service.backfiller.idle()
                    and service.history().imports == 0):
                return
            time.sleep(0.05)
        raise SystemExit("the import did not finish within 10 minutes")

    try:
        started = time.monotonic()
        settled()
        first_seconds, first_queries = time.monotonic() - started, queries()
        wanted, same, old = marks_held(work / "d.sqlite", first, events)
        print()
        print(f"{'':<18} {'queries':>8} {'seconds':>8}   DriverLog's marks held   one DriverLog poll")
        print(f"{'first start':<18} {first_queries:>8} {first_seconds:>8.1f}   {same:>4} of {wanted:<4} "
              f"({old} older than 90 days)   {poll_cost(first):>5} queries ({first.ci_bindings} bindings x "
              f"{sum(1 for r in first.releases if r.active) + 1} branches)")
        (work / "registry.json").write_text(json.dumps(fixed_doc))
        before, started = queries(), time.monotonic()
        assert service.reload(), "the fixed registry was refused"
        settled()
        wanted, same, old = marks_held(work / "d.sqlite", fixed, events)
        print(f"{'registry change':<18} {queries() - before:>8} {time.monotonic() - started:>8.1f}   {same:>4} of "
              f"{wanted:<4} ({old} older than 90 days)   {poll_cost(fixed):>5} queries")
    finally:
        service.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
