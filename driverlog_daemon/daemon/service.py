"""The daemon: wires the stages and owns the lifecycle of their threads (signals and systemd: ``run.py``).

    stream reader --blocks--> bounded queue --> writer (parse, match, group-commit) --> SQLite --> web tier
    backfill worker --comments--^                                                                (own processes)

The web tier (``web/tier.py``) runs apart; the daemon shares its live state and metrics with it through the
runtime directory (``runtime.py``).

Nothing here parses, matches, stores, reads the database or renders text: each of those is its own module.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paramiko
import structlog

from driverlog_daemon.config import Config, webhook_secret
from driverlog_daemon.daemon import registry_follow
from driverlog_daemon.daemon.reload import Reloads
from driverlog_daemon.daemon.systemd import Notifier, gap_text, status_line
from driverlog_daemon.expose import runtime
from driverlog_daemon.expose.runtime import Live
from driverlog_daemon.expose.web.tier import WebTier
from driverlog_daemon.expose.webhooks import Deliverer
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.source import query
from driverlog_daemon.source.backfill import Backfiller
from driverlog_daemon.source.history import Importer
from driverlog_daemon.source.registry_source import RegistrySource, kept_copy
from driverlog_daemon.source.stream import Backoff, StreamHooks, StreamListener
from driverlog_daemon.store import reads, reads_history
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.registry_apply import Applied, HistorySettings
from driverlog_daemon.store.store import Store
from driverlog_daemon.store.writer import Writer

log = structlog.get_logger("driverlog.daemon")

STOP_TIMEOUT = 4.0


#: The part of max_queries_per_minute the history import may use: the rest stays for the gap backfills.
IMPORT_BUDGET_SHARE = 0.75
WRITER_STALE_SECONDS = 30.0


class Service:
    """Everything the daemon runs, startable and stoppable in-process (tests use it directly)."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None, backoff: Backoff | None = None,
                 poll_interval: float = 0.5, notifier: Notifier | None = None, http: bool = True,
                 clock: Callable[[], float] = time.time, command_timeout: float = 120.0,
                 stall_check_seconds: float | None = None, probe_timeout: float | None = None,
                 backfill_retry_base: float = 1.0, backfill_page_size: int | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier("")
        self.stop_event = threading.Event()
        self.runtime_dir = runtime.current()
        self.registry_source = RegistrySource(
            config.registry, kept_copy(config).parent, clock=clock,
            counted=lambda result: self.metrics.registry_fetches.labels(result).inc()) if config.registry.url else None
        registry, raw = registry_follow.initial(config, self.registry_source)
        self._hand_over_registry(raw)
        self._count_2014_keys(registry)
        g = config.gerrit
        self.server_name = f"{g.host}:{g.port}" if g.host else ""
        self.clock = clock
        # a worker's command this long on the wire is stuck, for the stall check (5 s to a minute: the stall's scale)
        self._stall_check_seconds = stall_check_seconds if stall_check_seconds is not None else max(
            5.0, min(60.0, config.gerrit.stall_timeout_seconds))
        self.store = Store(Path(config.database.path).expanduser(), webhooks=config.webhooks)
        self._database_identity = _identity(self.store.path)
        first_start = bool(self.server_name) and reads.cursor(self.store.conn, self.server_name) is None
        follow = (config.registry.follow_project,) if config.registry.follow_project else ()
        self.pipeline = Pipeline(registry, self.store, metrics=self.metrics, server=self.server_name or None,
                                 clock=clock, follow=follow,
                                 on_followed_merge=self._followed_merge)
        # The registry in force against the one the file last applied: the history import it calls for
        applied = self.pipeline.apply_registry(registry, raw, self._history_settings())
        if self.registry_source is not None:
            self.registry_source.accepted(raw)
        self.pipeline.warm_up()
        self.writer = Writer(self.pipeline, on_dropped_output=self._dropped_output,
                             max_bytes=max(1, config.database.max_queued_bytes))
        self.reader = reads.Reader(self.store.path)  # the hooks' reads, on read-only connections
        self.backfiller = Backfiller(g, lambda: self.pipeline.registry.ci_accounts, self.writer, self.metrics,
                                     self._cursor, projects=lambda: self.pipeline.registry.review_projects,
                                     unknown_merges=self._unknown_merges, gaps=self.open_gaps,
                                     client=self._current_client, clock=clock,
                                     retry_base=backfill_retry_base,
                                     page_size=backfill_page_size or query.PAGE_SIZE,
                                     retry_cap=max(g.reconnect_max_delay_seconds, 0.1), first_start=first_start,
                                     command_timeout=command_timeout,
                                     on_idle=lambda: self.importer.wake(),
                                     gerrit_clock=self.pipeline.gerrit_clock.now)
        self.importer = Importer(self.reader, lambda: self.pipeline.registry, self.writer,
                                 executor=self._history_executor, quiet=self.backfiller.quiet, clock=clock,
                                 retry_cap=max(g.reconnect_max_delay_seconds, 0.1))
        if applied.import_id is not None:
            log.info("history_import_planned", import_id=applied.import_id, first=first_start)
        self.reloads = Reloads(self.writer, self.metrics, self._history_settings, self._reloaded,
                               in_force=lambda: self.pipeline.registry)
        self.follower = registry_follow.Follower(
            self.registry_source, self.reloads, self.stop_event,
            refresh_seconds=config.registry.refresh_seconds) if self.registry_source is not None else None
        self.listener: StreamListener | None = None
        if g.host:
            hooks = StreamHooks(deliver=self.writer.put_block, connected=self._connected,
                                quiet_window=self._quiet_window, resumed=self._resumed)
            self.listener = StreamListener(g, hooks, self.metrics, self.stop_event, backoff=backoff,
                                           poll_interval=poll_interval, probe_timeout=probe_timeout)
        self._client: paramiko.SSHClient | None = None
        self._listener_thread: threading.Thread | None = None
        self.metrics.watch_releases(self._release_times)
        self.metrics.watch_drivers(self._driver_times)
        self.metrics.watch_gaps(self._gap_state)
        self.metrics.watch_history(self._history_state)
        self.web: WebTier | None = None
        if http and config.http.enabled:
            source = config.source if config.source and not config.source.startswith("(") else None
            self.web = WebTier(config.http.listen, config.http.port,
                               config_path=source if source and Path(source).is_file() else None)
        self.deliverers = [Deliverer(hook, webhook_secret(hook), self.store.path, self.writer.record_delivery,
                                     counted=lambda hook, outcome: self.metrics.webhook_deliveries.labels(
                                         hook, outcome).inc()) for hook in config.webhooks]
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.writer.start()
        for deliverer in self.deliverers:
            deliverer.start()
        self.backfiller.start()
        self.importer.start()
        if self.follower is not None:
            self.follower.start()
        self.publish_state()
        if self.web is not None:
            self.web.start()
            log.info("http_listening", listen=self.config.http.listen, port=self.web.port)
        if self.listener is not None:
            self._listener_thread = threading.Thread(target=self.listener.run, name="driverlog-stream", daemon=True)
            self._listener_thread.start()
        else:
            log.warning("gerrit_not_configured", hint="set [gerrit] host to listen to a Gerrit server")

    def stop(self) -> bool:
        """Stop reading, commit what is queued, close the database. True when everything finished in time."""
        deadline = time.monotonic() + STOP_TIMEOUT

        def left(cap: float) -> float:  # of the time to stop, at most ``cap`` for one thread
            return max(0.1, min(cap, deadline - time.monotonic()))

        if self.web is not None:
            self.web.terminate()  # it finishes its answers while the writer commits
        self.stop_event.set()
        readers_done = all([self.importer.stop(left(1.5)), self.backfiller.stop(left(1.5)),
                            self.follower is None or self.follower.join(left(1.5))])  # all asked
        if self._listener_thread is not None:
            self._listener_thread.join(left(1.5))
            readers_done = readers_done and not self._listener_thread.is_alive()
        finished = self.writer.stop(left(STOP_TIMEOUT))
        for deliverer in self.deliverers:  # an answer awaited is abandoned: that delivery is sent again next time
            deliverer.stop(left(2.0))
        if self.web is not None:
            self.web.stop(max(0.5, deadline - time.monotonic()))
        if readers_done:  # a connection closed under a thread still reading on it crashes the process
            self.reader.close()
        else:
            log.warning("stop_left_reader_open", hint="a thread still reading did not end in time; exit frees it")
        if finished:
            self.store.close()
        return finished and readers_done

    def reload(self) -> Future[Applied | None] | None:
        """SIGHUP: validate the registry file and hand it to the writer, never waiting for it (``reload``);
        the reload's future, or None when it was refused at once."""
        if self.follower is not None:  # the registry's source is a URL: ask it now
            self.follower.kick("SIGHUP")
            return None
        return self.reloads.request(self.config.registry.path)

    def _followed_merge(self) -> None:
        if self.follower is not None:
            self.follower.kick(f"a change merged in {self.config.registry.follow_project}")

    def _reloaded(self, registry: Registry, raw: bytes, applied: Applied | None) -> None:
        self._hand_over_registry(raw)
        if applied is not None and applied.import_id is not None:
            self.importer.wake()
        self._count_2014_keys(registry)

    # -------------------------------------------------------------------------------------- hooks

    def _history_executor(self) -> Any:
        """The history import's command runner on the current connection (None: not connected), within its share
        of the query budget: the rest stays for the gap backfills."""
        client = self._current_client()
        return None if client is None else self.backfiller.executor(client, "history", share=IMPORT_BUDGET_SHARE)

    def _history_settings(self) -> HistorySettings:
        """What this daemon imports ([history]); Gerrit's clock as the stream last told it (rows updated since are
        read again when a search ends), with a day's margin when it has not spoken yet."""
        h, g = self.config.history, self.config.gerrit
        now = self.clock()
        newest = self.pipeline.stream_position
        overlap = g.backfill_overlap_minutes * 60
        gerrit_now = int(min(now, newest) - overlap) if newest else int(now - 86400)
        return HistorySettings(h.days, h.mark_search_days, first=bool(self.server_name), gerrit_now=gerrit_now,
                               queries=h.enabled and bool(self.server_name))  # no Gerrit: judge again, ask nothing

    def history(self) -> reads_history.Progress:
        with self.reader.snapshot() as conn:
            return reads_history.progress(conn)

    def _history_state(self) -> tuple[int, int]:
        progress = self.history()
        return progress.done, progress.total

    def _cursor(self) -> int | None:
        if not self.server_name:
            return None
        with self.reader.snapshot() as conn:
            return reads.cursor(conn, self.server_name)

    def _driver_times(self) -> list[tuple[str, str, str, str, int]]:
        with self.reader.snapshot() as conn:
            return reads.driver_last_times(conn)

    def _release_times(self) -> list[tuple[str, str, str, str, int, int | None]]:
        with self.reader.snapshot() as conn:
            return reads.release_times(conn)

    def live(self) -> Live:
        """What the status page's header shows beside the database: the stream's state."""
        return Live(gerrit=self.listener.state if self.listener else "not configured",
                    newest_event_time=self.pipeline.stats.newest_event_time, open_gap=gap_text(self.open_gaps()),
                    importing=self.history().text())

    def _unknown_merges(self) -> list[int]:
        with self.reader.snapshot() as conn:
            return reads.unknown_merges(conn)

    def _initial_since(self) -> int:
        """Where a first start's gap begins: as far back as a backfill may reach (the initial import)."""
        return int(self.clock()) - int(self.config.gerrit.backfill_max_age_hours * 3600)

    def _connected(self, client: paramiko.SSHClient, first: bool) -> None:
        self._client = client
        # What happened before this connection is not proven: a gap from the newest event committed (or the
        # stored cursor after a restart), recorded after every block already read, then a backfill covers it.
        self._backfill_gap(client, "start" if first else "reconnect")
        self.importer.wake()  # it steps once the gap's backfill is done: that goes first

    def _resumed(self, client: paramiko.SSHClient) -> None:
        """The stream speaks again after a quiet window judged alive: what it may have dropped since that window's
        backfill is a gap from the newest event committed (recorded before the block about to be delivered)."""
        self._backfill_gap(client, "resumed")

    def _backfill_gap(self, client: paramiko.SSHClient, trigger: str) -> None:
        gap = self.writer.open_gap(trigger, self._initial_since())
        self.backfiller.request(client, trigger, after=gap)

    def _current_client(self) -> paramiko.SSHClient | None:
        connected = self.listener is not None and self.listener.state == "connected"
        return self._client if connected else None

    def _dropped_output(self, since: int | None) -> None:
        log.warning("dropped_output", gap_since=since)  # the writer has recorded the gap
        if self._client is not None:
            self.backfiller.request(self._client, "dropped-output")

    def _quiet_window(self, client: paramiko.SSHClient, quiet_since: float) -> int | None:
        """A stall: the quiet window is a gap from the newest event committed (Gerrit's clock, not ours), backfilled
        by the backfill worker (one backfill at a time); None when the worker is stuck (a command of its on the wire
        for ``stall_check_seconds`` without an answer): the connection is then replaced rather than waited for."""
        self.writer.open_gap("stall", self._initial_since()).result(timeout=60)
        try:
            return self.backfiller.backfill_and_wait(client, "stall", stuck_after=self._stall_check_seconds).inserted
        except TimeoutError:
            return None

    def open_gaps(self) -> list[reads.Gap]:
        if not self.server_name:
            return []
        with self.reader.snapshot() as conn:
            return reads.open_gaps(conn, self.server_name)

    def _gap_state(self) -> tuple[list[reads.Gap], int | None, int | None]:
        """(open gaps, proven cursor, newest event seen) for the metrics."""
        if not self.server_name:
            return [], None, None
        with self.reader.snapshot() as conn:
            return (reads.open_gaps(conn, self.server_name), reads.cursor(conn, self.server_name),
                    reads.newest_event_time(conn, self.server_name))

    # ------------------------------------------------------------------------------ process health

    def database_gone(self) -> str | None:
        """Why the file at the configured path is no longer the one this process writes (deleted, moved away or
        replaced: its writes would land in an inode nobody reads, or mix with another file's WAL), or None."""
        try:
            now = _identity(self.store.path)
        except FileNotFoundError:
            return "was deleted or moved away"
        except OSError as exc:
            return f"cannot be checked ({exc.strerror})"
        return None if now == self._database_identity else "was replaced by another file"

    def writer_ok(self) -> bool:
        """The writer thread is alive, went round its loop lately (it does at least once a second, idle or
        not) and its last commit did not fail."""
        w = self.writer
        return w.alive and not w.failing and time.monotonic() - w.last_progress < WRITER_STALE_SECONDS

    def process_health(self) -> tuple[bool, dict[str, Any]]:
        """/healthz's answer: whether this process works (its writer does), and what it is doing."""
        stats = self.pipeline.stats
        detail: dict[str, Any] = {
            "writer": "ok" if self.writer_ok() else "stuck",
            "gerrit": self.listener.state if self.listener else "not configured",
            "events": stats.lines,
            "verifications_recorded": stats.recorded,
            "queue_depth": self.writer.queue.qsize(),
            "drivers": len(self.pipeline.registry.drivers),
            "open_gaps": [{"since": g.since, "reason": g.reason, "attempts": g.attempts, "last_error": g.last_error}
                          for g in self.open_gaps()],
            "cursor": self._cursor(),
        }
        if self.registry_source is not None:
            detail["registry_fetch"] = self.registry_source.last_fetch
        progress = self.history()
        detail["history"] = {"importing": progress.imports > 0, "bindings": progress.total,
                             "bindings_done": progress.done}
        if self.deliverers:
            try:
                with self.reader.snapshot() as conn:
                    detail["webhooks"] = reads.webhook_outbox(conn, time.time())
            except sqlite3.Error as exc:
                detail["webhooks"] = f"cannot be read: {exc}"
        if self.writer.failing:
            detail["writer"] = "failing: database writes fail and are retried (see db_write_failed in the log)"
        return self.writer_ok(), detail

    @staticmethod
    def _count_2014_keys(registry: Registry) -> None:
        if registry.legacy:  # accepted, but a maintainer should know: `validate` lists them, `--upgrade` fixes them
            log.warning("registry_2014_keys", count=len(registry.legacy),
                        hint="driverlog-daemon validate --upgrade prints the registry in today's form")

    def _hand_over_registry(self, raw: bytes) -> None:
        """The web tier shows the registry in force, not whatever the file holds now (it may be a broken edit)."""
        if self.runtime_dir is not None:
            runtime.write_registry(self.runtime_dir, raw)

    def publish_state(self) -> None:
        """Write the live state the web tier shows (health, the stream, the open gap) into the runtime directory."""
        if self.runtime_dir is None:
            return
        ok, detail = self.process_health()
        live = self.live()
        if self.web is not None:
            detail["web_tier_restarts"] = self.web.restarts
        runtime.write_state(self.runtime_dir, runtime.DaemonState(self.server_name, ok, detail, live))

    def status_line(self) -> str:
        stats, listener = self.pipeline.stats, self.listener
        line = status_line(self.server_name, listener.state if listener else None,
                           listener.last_error if listener else None, stats.lines, stats.recorded,
                           stats.last_verification_time, self.open_gaps())
        importing = self.history().text()
        return f"{line}; {importing}" if importing else line


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
