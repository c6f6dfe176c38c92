"""SIGHUP: the registry file read again, validated, and handed to the writer, without the main loop waiting on it.

The writer applies a registry between two batches. With the database busy (locked by another process, a stalled
disk) that may take a while, and the main loop must keep answering systemd's watchdog and SIGTERM meanwhile, so it
never waits. A reload ends as one of two things, never both: applied (``registry_reloaded``, once the writer has
done it), or cancelled before the writer took it up (``registry_reload_failed``): superseded by a newer SIGHUP, or
not taken up within ``timeout`` seconds. A cancelled reload is never applied later; the registry in force stays.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

import structlog

from driverlog_daemon.metrics import Metrics
from driverlog_daemon.registry.load import Registry, RegistryError, read_registry

if TYPE_CHECKING:
    from driverlog_daemon.store.registry_apply import Applied, HistorySettings
    from driverlog_daemon.store.writer import Writer

log = structlog.get_logger("driverlog.reload")

#: how long a reload may wait for the writer before it is cancelled
RELOAD_TIMEOUT = 30.0


class Reloads:
    """The reload in flight (at most one) and how it ends."""

    def __init__(self, writer: Writer, metrics: Metrics, settings: Callable[[], HistorySettings],
                 applied: Callable[[Registry, bytes, Applied | None], None], *, timeout: float = RELOAD_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic, in_force: Callable[[], Registry] | None = None) -> None:
        self.writer, self.metrics, self.settings, self.applied = writer, metrics, settings, applied
        self.in_force = in_force  # the registry kept when a file is refused (named in the log)
        self.timeout, self.clock = timeout, clock
        self._lock = threading.Lock()
        # the reload in flight: its future, when it was queued, and why it was cancelled (said before cancel())
        self._pending: tuple[Future[Applied | None], float, list[str]] | None = None

    def request(self, path: str) -> Future[Applied | None] | None:
        """Read and validate ``path``, then queue it for the writer; the reload's future, or None when it was
        refused at once (an invalid file, or a writer whose queue is full)."""
        try:
            registry, raw = read_registry(path, remember=True)
        except RegistryError as exc:
            self.refused(path, exc)
            return None
        except Exception as exc:  # unreadable: the old registry stays
            self._failed(path, error=f"{type(exc).__name__}: {exc}")
            return None
        return self.submit(registry, raw, path)

    def refused(self, path: str, exc: RegistryError) -> None:
        """A registry that failed the checks: logged and counted; the one in force stays."""
        kept = self.in_force().summary() if self.in_force is not None else None
        self._failed(path, errors=exc.errors[:20], error_count=len(exc.errors), kept=kept)

    def submit(self, registry: Registry, raw: bytes, path: str) -> Future[Applied | None] | None:
        """Queue a registry that passed the checks (read from ``path``, a file or a URL) for the writer."""
        self._cancel("a newer SIGHUP superseded it")
        try:
            future = self.writer.reload(registry, raw, self.settings(), timeout=1.0)
        except queue.Full:
            self._failed(path, error="the writer's queue is full (the database is busy?): nothing applied")
            return None
        why: list[str] = []
        with self._lock:
            self._pending = (future, self.clock(), why)
        future.add_done_callback(lambda f: self._ended(f, path, registry, raw, why))
        return future

    def check(self) -> None:
        """Each tick of the main loop: cancel a reload the writer has not taken up within the timeout."""
        with self._lock:
            pending = self._pending
        if pending is not None and self.clock() - pending[1] >= self.timeout:
            self._cancel(f"the writer did not take it up within {self.timeout:.0f} s (the database is busy?)")

    def _cancel(self, why: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            future, _, reasons = pending
            reasons.append(why)
            future.cancel()  # False when taken up already: it then ends as applied or failed

    def _ended(self, future: Future[Applied | None], path: str, registry: Registry, raw: bytes,
               why: list[str]) -> None:
        with self._lock:
            if self._pending is not None and self._pending[0] is future:
                self._pending = None
        if future.cancelled():
            self._failed(path, error=f"cancelled: {why[0] if why else 'cancelled'}; nothing applied")
            return
        error = future.exception()
        if error is not None:
            self._failed(path, error=f"{type(error).__name__}: {error}")
            return
        applied = future.result()
        self.metrics.registry_reloads.labels("ok").inc()
        log.info("registry_reloaded", path=path, summary=registry.summary(),
                 history_import=applied.import_id if applied else None)
        self.applied(registry, raw, applied)

    def _failed(self, path: str, **why: object) -> None:
        self.metrics.registry_reloads.labels("error").inc()
        log.error("registry_reload_failed", path=path, **why)
