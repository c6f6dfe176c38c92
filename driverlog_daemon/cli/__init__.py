"""The command line: a thin layer over the modules (``driverlog-daemon --help``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from driverlog_daemon import __version__
from driverlog_daemon.cli.commands import (
    EXIT_CONFIG,
    EXIT_INVALID,
    EXIT_OK,
    cmd_check_config,
    cmd_replay,
    cmd_run,
    cmd_serve,
    cmd_validate,
)
from driverlog_daemon.cli.reading import cmd_export, cmd_health, cmd_registry_diff

# Each command imports what it uses when it runs: `--help`, `--version` and a short command start in a blink.

__all__ = ["COMMANDS", "EXIT_CONFIG", "EXIT_INVALID", "EXIT_OK", "build_parser", "main"]


COMMANDS = ("validate", "registry", "replay", "run", "serve", "health", "export", "check-config", "demo")


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

    if only in (None, "registry"):
        p = add("registry", "compare registries: what a proposed change does",
                "registry diff OLD NEW: the drivers added, removed and changed (with the fields), the releases "
                "and projects, and the CI bindings judged again, one line each naming it; with --database, read-only, "
                "the marks that would appear, change or vanish and how each changed binding's kept comments would "
                "be judged. Exits as diff(1): 0 no change, 1 changes, 2 an invalid registry or no database.")
        verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
        d = verbs.add_parser("diff", help="what NEW changes against OLD", formatter_class=_Formatter)
        d.add_argument("old", metavar="OLD", help="the registry in force (a file)")
        d.add_argument("new", metavar="NEW", help="the proposed registry (a file)")
        d.add_argument("--database", metavar="PATH", help="SQLite file: judge its kept comments under NEW")
        d.add_argument("--json", action="store_true", help="JSON: the same, as /api/1.0/registry gives a diff")
        d.set_defaults(func=cmd_registry_diff)

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
        p.add_argument("--jobs", action="store_true",
                       help="per job of each CI driver over 30 days, worst first (with --json: the jobs API's object)")
        p.add_argument("--database", metavar="PATH", help="SQLite file (default: [database] path)")
        p.set_defaults(func=cmd_health)

    if only in (None, "export"):
        p = add("export", "write the verifications, the marks' history or the job results as CSV",
                "Write CSV (RFC 4180, a header row) to stdout, as /export/<what>.csv serves it: 'verifications' in "
                "the order they were recorded, 'marks' the mark transitions in time order, 'jobs' each job line of "
                "each driver's CI comments in comment order. Text cells a spreadsheet would run as a formula start "
                "with a '. Reads the database read-only: no daemon needed.")
        p.add_argument("what", choices=("verifications", "marks", "jobs"))
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
