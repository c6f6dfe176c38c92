"""The command line: a thin layer over the modules (``driverlog-daemon --help``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from driverlog_daemon import __version__
from driverlog_daemon.parse.bounds import utc_text

if TYPE_CHECKING:
    from driverlog_daemon.config import Config

# Each command imports what it uses when it runs: `--help`, `--version` and a short command start in a blink.

EXIT_OK, EXIT_INVALID, EXIT_CONFIG = 0, 1, 2


def _config(args: argparse.Namespace) -> Config:
    from driverlog_daemon.config import load_config

    return load_config(getattr(args, "config", None) or os.environ.get("DRIVERLOG_CONFIG"))


def cmd_validate(args: argparse.Namespace) -> int:
    from driverlog_daemon.registry.load import RegistryError, read_registry

    path = args.path or _config(args).registry.path
    try:
        registry, data = read_registry(path, strict=args.strict)
    except RegistryError as exc:
        for error in exc.errors:
            print(f"{exc.source}: {error}" if error.startswith(("file not", "is a dir", "cannot read"))
                  else error, file=sys.stderr)
        return EXIT_INVALID
    for note in registry.legacy:
        print(f"warning: {note}", file=sys.stderr)
    if args.upgrade:
        import json

        from driverlog_daemon.registry.legacy import upgrade

        json.dump(upgrade(json.loads(data)), sys.stdout, indent=4, ensure_ascii=False)
        sys.stdout.write("\n")
        print(f"upgraded: {registry.summary()}, {len(registry.legacy)} 2014 keys replaced", file=sys.stderr)
        return EXIT_OK
    legacy = f", {len(registry.legacy)} 2014 keys (see the warnings)" if registry.legacy else ""
    print(f"ok: {registry.summary()}{legacy}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from driverlog_daemon import logs
    from driverlog_daemon.registry.load import load_registry
    from driverlog_daemon.source.replay import default_jobs, format_report, replay
    from driverlog_daemon.store.pipeline import UNMEASURED, Pipeline
    from driverlog_daemon.store.store import Store

    config = _config(args)
    logs.configure_on_first_use(config.log.level, config.log.format)
    registry = load_registry(args.registry or config.registry.path, remember=True)
    if args.file != "-" and not os.path.exists(args.file):
        print(f"{args.file}: file not found", file=sys.stderr)
        return EXIT_INVALID
    with Store(args.database or config.database.path) as store:
        pipeline = Pipeline(registry, store, metrics=UNMEASURED)
        progress = sys.stderr if sys.stderr.isatty() and not args.quiet else None
        report = replay(pipeline, args.file, progress=progress, batch_rows=args.batch_rows,
                        jobs=args.jobs or default_jobs())
        print(format_report(pipeline, report))
    return 130 if report.interrupted else EXIT_OK


def _checked_config(args: argparse.Namespace, remember: bool = False, writes: bool = True,
                    before_start: bool = False) -> tuple[Config, str]:
    """Configuration, its files and its registry, checked as ``run`` needs them; ConfigError names the key.
    ``remember``: trust a registry already found valid (``run``; ``check-config`` checks it again). Notes (what
    is not wrong but not there yet) go to stderr."""
    from driverlog_daemon.config import ConfigError, check_files
    from driverlog_daemon.registry.load import RegistryError, load_registry

    config = _config(args)
    for note in check_files(config, writes=writes, before_start=before_start):
        print(f"note: {note}", file=sys.stderr)
    try:
        registry = load_registry(config.registry.path, remember=remember)
    except RegistryError as exc:
        raise ConfigError("registry.path", f"{config.registry.path} is not a valid registry: "
                          + "; ".join(exc.errors[:10]) + (" …" if len(exc.errors) > 10 else "")) from None
    return config, registry.summary()


def cmd_check_config(args: argparse.Namespace) -> int:
    config, summary = _checked_config(args, before_start=True)
    print(f"# effective configuration (from {config.source}, then DRIVERLOG_* environment variables)")
    for section, values in config.redacted().items():
        print("[[webhook]]" if section.startswith("webhook ") else f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)}")
        print()
    print(f"# registry: {summary}")
    print("ok")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from driverlog_daemon.store import reads_health, schema

    config = _config(args)
    database = Path(args.database or config.database.path).expanduser()
    if not database.exists():
        print(f"no database at {database} ([database] path)", file=sys.stderr)
        return EXIT_INVALID
    conn = schema.connect(database, readonly=True)
    now = time.time()
    healths = reads_health.registered_ci_health(conn, now, config.health.silence_days)
    rows = [((v, n, a), h) for (_, v, n, a), h in healths if not args.at_risk or h["at_risk"] is True]
    rows.sort(key=lambda r: (r[0][0].lower(), r[0][1].lower()))
    if args.json:
        print(json.dumps([{"vendor": v, "driver": n, "ci_account": a, "health": h} for (v, n, a), h in rows],
                         indent=1))
        return EXIT_OK

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.0%}"

    def when(t: int | None) -> str:
        return "never" if t is None else utc_text(t, "%Y-%m-%d")

    print(f"{'vendor':<22} {'driver':<40} {'runs 30d':>8} {'pass 30d':>8} {'coverage 30d':>13} {'last success':>12} "
          f"at risk")
    for (vendor, name, _), h in rows:
        cov = h["coverage"]
        risk = {True: "yes", False: "no", None: "unknown"}[h["at_risk"]]
        coverage = f"{pct(cov['ratio'])} of {cov['merged']}"
        print(f"{vendor[:22]:<22} {name[:40]:<40} {h['runs']['30']:>8} {pct(h['pass_rate']['30']):>8} "
              f"{coverage:>13} {when(h['last_success']):>12} {risk}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from driverlog_daemon.expose import export
    from driverlog_daemon.store import schema

    database = Path(args.database or _config(args).database.path).expanduser()
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


def cmd_run(args: argparse.Namespace) -> int:
    from driverlog_daemon import logs
    from driverlog_daemon.expose import runtime

    config, _ = _checked_config(args, remember=True)
    logs.configure(config.log.level, config.log.format)
    # Before prometheus_client is imported: the daemon's metrics and its web tier's (its own child, or a
    # separate `serve`) meet in the runtime directory, beside the daemon's live state.
    root, fresh = runtime.prepare()
    created = root if fresh else None
    from driverlog_daemon.daemon.run import run

    try:
        return run(config)
    finally:
        if created is not None:
            import shutil

            shutil.rmtree(created, ignore_errors=True)


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile

    from driverlog_daemon import logs

    config, _ = _checked_config(args, remember=True, writes=False)
    logs.configure(config.log.level, config.log.format)
    own_metrics = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # alone: the workers' metrics meet in a folder of its own
        own_metrics = tempfile.mkdtemp(prefix="driverlog-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics  # before prometheus_client is imported
    from driverlog_daemon.expose.web.server import serve

    arbiter = os.getpid()
    try:
        return serve(config, fd=args.fd)
    finally:  # gunicorn's workers are forks that leave through here too: only the arbiter cleans up
        if own_metrics is not None and os.getpid() == arbiter:
            shutil.rmtree(own_metrics, ignore_errors=True)


COMMANDS = ("validate", "replay", "run", "serve", "health", "export", "check-config", "demo")


class _Formatter(argparse.HelpFormatter):
    """argparse's own, told the terminal's width: left to itself it imports shutil (and bz2, lzma) for it at every
    add_argument, which a short command should not pay for."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size().columns
        except (ValueError, OSError):
            columns = 80
        super().__init__(prog, width=max(columns - 2, 20))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``only``: with just that command's parser (argparse looks up translations for every
    parser it builds: the others would cost a short command a few milliseconds)."""
    parser = argparse.ArgumentParser(
        prog="driverlog-daemon", formatter_class=_Formatter,
        description="Record OpenStack third-party CI results for DriverLog drivers from Gerrit into SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description, formatter_class=_Formatter)
        p.add_argument("--config", metavar="PATH",
                       help="configuration file (default: $DRIVERLOG_CONFIG or /etc/driverlog/driverlog.toml)")
        return p

    if only in (None, "validate"):
        p = add("validate", "check a driver registry file",
                "Validate a DriverLog registry (JSON syntax, schema, semantic checks). Prints one summary line and "
                "exits 0, or prints every error (one a line, with its JSON path) and exits 1. DriverLog's 2014 keys "
                "(maintainer, ci_id) are accepted with one warning each on stderr.")
        p.add_argument("path", nargs="?", help="registry file (default: [registry] path of the configuration)")
        p.add_argument("--strict", action="store_true",
                       help="DriverLog's 2014 keys (maintainer, ci_id) are errors, not warnings")
        p.add_argument("--upgrade", action="store_true",
                       help="print the registry in today's form (2014 keys replaced, same drivers, same meaning)")
        p.set_defaults(func=cmd_validate)

    if only in (None, "replay"):
        p = add("replay", "feed a recorded event stream into the database",
                "Read a recorded `gerrit stream-events` output (one JSON event a line; .gz read transparently; - for "
                "stdin), match CI comments and record verifications with source 'replay'. Idempotent. Ctrl-C keeps "
                "every committed batch and says how far it got.")
        p.add_argument("file", help="recorded stream, .gz, or - for stdin")
        p.add_argument("--database", metavar="PATH", help="SQLite file (default: [database] path)")
        p.add_argument("--registry", metavar="PATH", help="registry file (default: [registry] path)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--batch-rows", type=int, default=2000, metavar="N",
                       help="commit after every N verifications (default: 2000)")
        p.add_argument("--jobs", type=int, default=0, metavar="N",
                       help=f"worker processes that scan a plain file (default: the CPUs available, here "
                            f"{len(os.sched_getaffinity(0))}); 1 for none")
        p.set_defaults(func=cmd_replay)

    if only in (None, "run"):
        p = add("run", "run the daemon",
                "Listen to Gerrit's event stream, backfill what was missed, record verifications; start and "
                "supervise the web tier (driverlog-daemon serve) unless [http] enabled = false. Checks the "
                "configuration first (exit 2 naming the key). SIGTERM/SIGINT stop after committing what is queued; "
                "SIGHUP reloads the registry (an invalid one is refused and the old one kept).")
        p.set_defaults(func=cmd_run)

    if only in (None, "serve"):
        p = add("serve", "serve the page, API, badges and metrics from the database, read-only",
                "The web tier alone: a pre-fork server ([http] workers, threads) on [http] listen and port, reading "
                "the configured database read-only (a copy on another host, or a separate systemd unit). `run` "
                "starts it itself.")
        p.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # a socket from `run`
        p.set_defaults(func=cmd_serve)

    if only in (None, "health"):
        p = add("health", "print every CI driver's health from the database",
                "Pass rate and runs over 30 days, coverage of merged changes over 30 days, the newest success and "
                "whether the driver is at risk (no success within [health] silence_days; unknown while the database "
                "is not proven complete that far back). Reads the database read-only: no daemon needed.")
        p.add_argument("--at-risk", action="store_true", help="only the drivers at risk")
        p.add_argument("--json", action="store_true", help="JSON: the API's health object per driver")
        p.add_argument("--database", metavar="PATH", help="SQLite file (default: [database] path)")
        p.set_defaults(func=cmd_health)

    if only in (None, "export"):
        p = add("export", "write the verifications or the marks' history as CSV",
                "Write CSV (RFC 4180, a header row) to stdout, as /export/<what>.csv serves it: 'verifications' in "
                "the order they were recorded, 'marks' the mark transitions in time order. Text cells a spreadsheet "
                "would run as a formula start with a '. Reads the database read-only: no daemon needed.")
        p.add_argument("what", choices=("verifications", "marks"))
        p.add_argument("--driver", type=int, metavar="ID", help="one driver (drivers.id)")
        p.add_argument("--since", metavar="TIME", help="from this time on: epoch seconds, 2026-11-30, or ISO 8601")
        p.add_argument("--until", metavar="TIME", help="before this time")
        p.add_argument("--database", metavar="PATH", help="SQLite file (default: [database] path)")
        p.set_defaults(func=cmd_export)

    if only in (None, "check-config"):
        p = add("check-config", "print and check the effective configuration",
                "Print the effective configuration (file, defaults and DRIVERLOG_<SECTION>_<KEY> overrides) and "
                "check it with its registry: an unknown key, a wrong type, an unreadable key_file or known_hosts, an "
                "invalid registry exit 2 with the key named.")
        p.set_defaults(func=cmd_check_config)

    # `demo` has its own parser (driverlog_daemon.testing.demo); listed here for --help only
    sub.add_parser("demo", formatter_class=_Formatter,
                   help="run the daemon against a local Gerrit test server (make demo); demo --help")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from driverlog_daemon.testing import demo

        return demo.main(argv[1:])
    parser = build_parser(only=argv[0] if argv[:1] and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    from driverlog_daemon.config import ConfigError
    from driverlog_daemon.model import InputError
    from driverlog_daemon.registry.load import RegistryError
    from driverlog_daemon.store.schema import StoreError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RegistryError as exc:
        print(f"invalid registry {exc.source}:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_INVALID
    except (StoreError, InputError) as exc:  # "PATH: what is wrong"
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # a file the command was given or configured with, and what the system said of it
        print(f"{exc.filename or 'driverlog-daemon'}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
