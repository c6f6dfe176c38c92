"""The commands that configure, check and run the daemon (``validate``, ``replay``, ``check-config``, ``run``,
``serve``); each imports what it uses when it runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from driverlog_daemon.config import Config, ConfigError
    from driverlog_daemon.registry.load import RegistryError

EXIT_OK, EXIT_INVALID, EXIT_CONFIG = 0, 1, 2


def configuration(args: argparse.Namespace) -> Config:
    from driverlog_daemon.config import load_config

    return load_config(getattr(args, "config", None) or os.environ.get("DRIVERLOG_CONFIG"))


def cmd_validate(args: argparse.Namespace) -> int:
    from driverlog_daemon.registry.load import RegistryError, read_registry

    path = args.path or configuration(args).registry.path
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

    config = configuration(args)
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
    from driverlog_daemon.config_checks import check_files
    from driverlog_daemon.registry.load import RegistryError, load_registry

    config = configuration(args)
    if config.registry.url and not writes and "DRIVERLOG_REGISTRY_PATH" not in os.environ:
        # `serve` alone does not ask the URL: it shows the copy the daemon kept of it beside the database
        from driverlog_daemon.source.registry_source import kept_copy

        config = config._replace(registry=config.registry._replace(path=str(kept_copy(config)), url=""))
    for note in check_files(config, writes=writes, before_start=before_start):
        print(f"note: {note}", file=sys.stderr)
    if config.registry.url and writes:
        if remember:  # `run`: its service asks the URL as it starts (once), and says what is wrong as here
            return config, config.registry.url
        from driverlog_daemon.daemon.registry_follow import initial
        from driverlog_daemon.source.registry_source import RegistrySource, kept_copy

        try:  # `check-config`, as `run` will: the URL, else the copy kept
            registry = initial(config, RegistrySource(config.registry, kept_copy(config).parent))[0]
        except RegistryError as exc:
            raise invalid_registry("registry.url", config.registry.url, exc) from None
        return config, registry.summary()
    try:
        registry = load_registry(config.registry.path, remember=remember)
    except RegistryError as exc:
        raise invalid_registry("registry.path", config.registry.path, exc) from None
    return config, registry.summary()


def invalid_registry(key: str, where: str, exc: RegistryError) -> ConfigError:
    """The configuration error of a registry that cannot be used, naming ``key``."""
    from driverlog_daemon.config import ConfigError

    return ConfigError(key, f"{where} is not a valid registry: " + "; ".join(exc.errors[:10])
                       + (" …" if len(exc.errors) > 10 else ""))


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
    from driverlog_daemon.registry.load import RegistryError

    try:
        return run(config)
    except RegistryError as exc:  # the registry's URL gave none, and no copy of it is kept
        raise invalid_registry("registry.url", config.registry.url, exc) from None
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
