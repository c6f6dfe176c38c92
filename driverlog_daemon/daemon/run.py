"""``driverlog-daemon run``: the service's life under systemd (or a terminal): signals, readiness, watchdog, STATUS.

SIGTERM and SIGINT stop it (queued results committed first), SIGHUP reloads the registry; every tick (at most a
second, or the watchdog's half-interval) it tells the watchdog the writer is alive, publishes its live state for
the web tier and updates systemd's STATUS line.
"""

from __future__ import annotations

import faulthandler
import signal
import sqlite3
import threading
from types import FrameType

import structlog

from driverlog_daemon.config import Config
from driverlog_daemon.daemon.service import STOP_TIMEOUT, Service
from driverlog_daemon.daemon.systemd import Notifier, watchdog_interval

log = structlog.get_logger("driverlog.daemon")

#: Past the stop's own bound, before the process is ended with every thread's stack printed.
STOP_GRACE = 4.0


def run(config: Config) -> int:
    """``driverlog-daemon run``: start, notify systemd, serve until SIGTERM/SIGINT; SIGHUP reloads."""
    notifier = Notifier()
    try:
        service = Service(config, notifier=notifier)
    except (OSError, sqlite3.Error) as exc:
        log.error("startup_failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    stop = threading.Event()
    reload_requested = threading.Event()
    wakeup = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        (reload_requested if signum == signal.SIGHUP else stop).set()
        wakeup.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    service.start()
    notifier.send("READY=1", f"STATUS={service.status_line()}")
    log.info("daemon_ready", database=service.store.path, registry=config.registry.url or config.registry.path,
             drivers=len(service.pipeline.registry.drivers), gerrit=service.server_name or None,
             watchdog_seconds=watchdog_interval())
    interval = watchdog_interval()
    tick = min(interval, 1.0) if interval else 1.0  # the web tier's view of the daemon is at most this old
    last_status = ""
    failed = False  # ended for a fault, not asked to: exit non-zero whatever the stop
    while not stop.is_set():
        wakeup.wait(tick)
        wakeup.clear()
        if reload_requested.is_set():
            reload_requested.clear()
            service.reload()
        service.reloads.check()
        if stop.is_set():
            break
        if not service.writer.alive:  # nothing more would be recorded: end, so that systemd starts it again
            log.critical("daemon_exiting", reason="the writer thread died", hint="see writer_died above")
            break
        gone = service.database_gone()
        if gone:  # systemd starts it again on the file at the configured path; the start backfill fills the gap
            log.critical("daemon_exiting", reason=f"the database file {gone}", database=service.store.path)
            failed = True
            break
        if interval and service.writer_ok():
            notifier.send("WATCHDOG=1")
        try:
            service.publish_state()
        except OSError as exc:  # the web tier then reports the daemon silent: unhealthy, as it should
            log.error("state_not_published", error=str(exc))
        status = service.status_line()
        if status != last_status:
            notifier.send(f"STATUS={status}")
            last_status = status
    notifier.send("STOPPING=1", "STATUS=stopping: committing queued events")
    log.info("daemon_stopping")
    # Stopping is bounded (STOP_TIMEOUT per stage); should anything still hang, systemd's stop timeout is not the
    # only way out: every thread's stack goes to stderr (the journal) and the process ends, not clean.
    faulthandler.dump_traceback_later(STOP_TIMEOUT + STOP_GRACE, exit=True)
    finished = service.stop()
    log.info("daemon_stopped", clean=finished, events=service.pipeline.stats.lines,
             verifications_recorded=service.pipeline.stats.recorded)
    notifier.close()
    return 0 if finished and not failed else 1
