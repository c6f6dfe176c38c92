"""The commands that read a database or registries and write nothing (``health``, ``export``, ``registry diff``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from driverlog_daemon.cli.commands import EXIT_CONFIG, EXIT_INVALID, EXIT_OK, configuration
from driverlog_daemon.parse.bounds import utc_text


def cmd_health(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from driverlog_daemon.store import reads_health, schema

    config = configuration(args)
    database = Path(args.database or config.database.path).expanduser()
    if not database.exists():
        print(f"no database at {database} ([database] path)", file=sys.stderr)
        return EXIT_INVALID
    conn = schema.connect(database, readonly=True)
    now = time.time()
    healths = reads_health.registered_ci_health(conn, now, config.health.silence_days)
    rows = [((v, n, a), h) for (_, v, n, a), h in healths if not args.at_risk or h["at_risk"] is True]
    rows.sort(key=lambda r: (r[0][0].lower(), r[0][1].lower()))
    if args.jobs:
        return _health_jobs(conn, [key for key, _ in rows], now, args.json)
    if args.json:
        print(json.dumps([{"vendor": v, "driver": n, "ci_account": a, "health": h} for (v, n, a), h in rows],
                         indent=1))
        return EXIT_OK

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.0%}"

    def when(t: int | None) -> str:
        return "never" if t is None else utc_text(t, "%Y-%m-%d")

    print(f"{'vendor':<22} {'driver':<40} {'runs 30d':>8} {'pass 30d':>8} {'coverage 30d':>13} {'no verdict':>10} "
          f"{'last success':>12} at risk")
    for (vendor, name, _), h in rows:
        cov = h["coverage"]
        risk = {True: "yes", False: "no", None: "unknown"}[h["at_risk"]]
        coverage = f"{pct(cov['ratio'])} of {cov['merged']}"
        unjudged = h["unjudged"] or {"no_verdict": 0}
        print(f"{vendor[:22]:<22} {name[:40]:<40} {h['runs']['30']:>8} {pct(h['pass_rate']['30']):>8} "
              f"{coverage:>13} {unjudged['no_verdict']:>10} {when(h['last_success']):>12} {risk}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from driverlog_daemon.expose import export
    from driverlog_daemon.store import schema

    database = Path(args.database or configuration(args).database.path).expanduser()
    if not database.exists():
        print(f"no database at {database} ([database] path)", file=sys.stderr)
        return EXIT_INVALID
    try:
        since, until = export.window(args.since, args.until)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    conn = schema.connect(database, readonly=True)
    conn.execute("BEGIN")  # one snapshot, however long the export
    out = sys.stdout.buffer
    for chunk in export.as_csv(conn, args.what, driver_id=args.driver, since=since, until=until):
        out.write(chunk)
    out.flush()
    return EXIT_OK


def cmd_registry_diff(args: argparse.Namespace) -> int:
    """Exits as diff(1) does: 0 the same meaning, 1 changes, 2 trouble (an invalid registry, no database)."""
    from pathlib import Path

    from driverlog_daemon.registry import diff
    from driverlog_daemon.registry.load import RegistryError, load_registry
    from driverlog_daemon.store import reads_preview, schema

    try:
        old, new = load_registry(args.old), load_registry(args.new)
    except RegistryError as exc:
        for error in exc.errors:
            print(f"{exc.source}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    changes = diff.diff(old, new)
    preview = None
    if args.database:
        database = Path(args.database).expanduser()
        if not database.exists():
            print(f"{database}: no database there", file=sys.stderr)
            return EXIT_CONFIG
        conn = schema.connect(database, readonly=True)
        conn.execute("BEGIN")  # one snapshot
        preview = reads_preview.preview(conn, changes.bindings, new)
    if args.json:
        out = diff.as_json(changes)
        if preview is not None:
            out["database"] = reads_preview.as_json(preview)
        print(json.dumps(out, indent=1, ensure_ascii=False))
    else:
        for line in diff.lines(changes) + (reads_preview.lines(preview) if preview is not None else []):
            print(line)
        print(f"{diff.summary(changes)}" if not changes.empty else "no change")
    return EXIT_OK if changes.empty else EXIT_INVALID


def _health_jobs(conn: Any, drivers: list[tuple[str, str, str]], now: float, as_json: bool) -> int:
    """``health --jobs``: each CI driver's jobs over 30 days (docs/health.md#jobs), worst first."""
    from driverlog_daemon.expose.web.pages import percent, took
    from driverlog_daemon.store import reads_jobs

    ids = {(v, n): i for i, v, n in conn.execute("SELECT id, vendor, name FROM drivers WHERE removed_at IS NULL")}
    found = [((v, n, a), reads_jobs.jobs(conn, ids[(v, n)], now, reads_jobs.DEFAULT_DAYS)) for v, n, a in drivers]
    if as_json:
        print(json.dumps([{"vendor": v, "driver": n, "ci_account": a, **(j or {})} for (v, n, a), j in found],
                         indent=1))
        return EXIT_OK
    print(f"{'vendor':<18} {'driver':<32} {'job':<40} {'runs':>5} {'pass':>5} {'flaky':>5} {'rechecks':>8} "
          f"{'median':>7} {'p90':>7}")
    for (vendor, name, _), j in found:
        for job in (j or {}).get("jobs", []):
            print(f"{vendor[:18]:<18} {name[:32]:<32} {job['name'][:40]:<40} {job['runs']:>5} "
                  f"{percent(job['pass_rate']):>5} {job['flaky']:>5} {job['rechecks']:>8} "
                  f"{took(job['median_seconds']):>7} {took(job['p90_seconds']):>7}")
    return EXIT_OK
