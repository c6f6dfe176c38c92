"""A registry followed from its URL (``[registry] url``): the first one at start, then asked again every
``refresh_seconds``, at once on SIGHUP, and at once when the stream shows a change merged in ``follow_project``
(DriverLog's own repository: the dashboard then shows a merged registry change within seconds).

A merged change reaches a raw-file URL after the mirror has replicated it, so after a merge the URL is asked again a
few times (:data:`AFTER_MERGE`) until it answers something new. Whatever it answers goes through the checks and the
reload a SIGHUP's file goes through (:class:`Reloads`); an unreachable source, an error, an invalid registry keep
the registry in force, logged (``registry_fetch_failed``), counted (``driverlog_registry_fetches_total``) and shown
(``last_fetch`` in ``/healthz`` and ``/registry``). Only a registry that was applied is kept as the last good copy.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import structlog

from driverlog_daemon.config import Config
from driverlog_daemon.daemon.reload import RELOAD_TIMEOUT, Reloads
from driverlog_daemon.registry.checks import DEFAULT_REGISTRY_PATH
from driverlog_daemon.registry.load import Registry, RegistryError, read_registry, registry_from_bytes
from driverlog_daemon.source.registry_source import FetchError, RegistrySource

log = structlog.get_logger("driverlog.registry")

AFTER_MERGE = (2.0, 10.0, 30.0, 90.0)  # seconds after a kick, until the URL answers something new


def demo_registry_against_real_gerrit(registry_path: str, gerrit_host: str) -> bool:
    """The shipped registry (invented vendors, for the demo and the tests) against a Gerrit that is not this
    machine's: nothing real would ever match, and the page would show fiction."""
    if not gerrit_host or gerrit_host in ("localhost", "::1") or gerrit_host.startswith("127."):
        return False
    try:
        return Path(registry_path).expanduser().resolve() == DEFAULT_REGISTRY_PATH.resolve()
    except OSError:
        return False


def initial(config: Config, source: RegistrySource | None) -> tuple[Registry, bytes]:
    """The registry to start with: the file, or the URL's answer, else (source down, invalid) the copy kept, with
    a warning; :class:`RegistryError` naming the URL when there is neither."""
    if source is None:
        if demo_registry_against_real_gerrit(config.registry.path, config.gerrit.host):
            log.warning("demo_registry_in_use", registry=config.registry.path, gerrit=config.gerrit.host,
                        hint="the shipped registry lists invented vendors: point [registry] path at DriverLog's "
                             "default_data.json (README, Deploying)")
        return read_registry(config.registry.path, remember=True)
    kept = source.cached()
    why = ""
    try:
        data = source.ask(conditional=kept is not None)  # None: not modified since the copy kept
        data = data if data is not None else kept or b""
        try:
            return registry_from_bytes(data, source.url, remember=True), data
        except RegistryError as exc:
            why = _refusal(exc)
            source.failed(why, "invalid")
            if kept is None:
                raise
    except FetchError as exc:
        why = str(exc)
        if kept is None:
            raise RegistryError(source.url, [f"cannot fetch: {why}; and no copy kept in {source.cache_dir}"]) from None
    assert kept is not None
    log.warning("registry_source_unavailable", url=source.url, error=why, using=f"the copy kept in {source.cache_dir}")
    return registry_from_bytes(kept, source.url, remember=True), kept


def _refusal(exc: RegistryError) -> str:
    """What ``last_fetch`` says of an answer that failed the checks (its first errors)."""
    return "invalid registry: " + "; ".join(exc.errors[:5])


class Follower:
    """The thread that asks the URL again (``run``); ``kick`` asks it now."""

    def __init__(self, source: RegistrySource, reloads: Reloads, stop: threading.Event, *,
                 refresh_seconds: float, after_kick: tuple[float, ...] = AFTER_MERGE) -> None:
        self.source, self.reloads, self.stop, self.refresh = source, reloads, stop, refresh_seconds
        self.after_kick = after_kick
        self._kick = threading.Event()
        self._refused: tuple[str, str] | None = None  # (sha256, why) of the last answer that failed the checks
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="driverlog-registry", daemon=True)
        self.thread.start()

    def kick(self, why: str) -> None:
        log.info("registry_fetch_asked", url=self.source.url, why=why)
        self._kick.set()

    def run(self) -> None:
        retries: list[float] = []  # after a kick: when to ask again (monotonic) while nothing new came
        while not self.stop.is_set():
            now = time.monotonic()
            due = retries[0] if retries else (now + self.refresh if self.refresh else None)
            kicked = self._kick.wait(None if due is None else max(0.0, due - now))
            if self.stop.is_set():
                return
            if kicked:
                self._kick.clear()
                retries = [time.monotonic() + d for d in self.after_kick]
            elif retries:
                retries.pop(0)
            if self.once():
                retries = []

    def join(self, timeout: float) -> bool:
        """After ``stop`` is set: wake the thread and wait for it; True when it ended."""
        self._kick.set()
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    def once(self) -> bool:
        """Ask once; True when the answer was new (applied or refused)."""
        try:
            data = self.source.ask()
        except FetchError as exc:
            log.warning("registry_fetch_failed", url=self.source.url, error=str(exc),
                        kept=self.reloads.in_force().summary() if self.reloads.in_force else None)
            return False
        if data is None:
            return False
        digest = hashlib.sha256(data).hexdigest()
        if self._refused is not None and self._refused[0] == digest:  # the same bad answer: said once already
            self.source.failed(self._refused[1], "invalid")
            return False
        try:
            registry = registry_from_bytes(data, self.source.url, remember=True)
        except RegistryError as exc:
            self._refused = (digest, _refusal(exc))
            self.source.failed(self._refused[1], "invalid")
            self.reloads.refused(self.source.url, exc)
            return True
        future = self.reloads.submit(registry, data, self.source.url)
        if future is None:
            return False
        try:
            future.result(RELOAD_TIMEOUT + 5)
        except Exception:  # cancelled, failed or not taken up: the reload logged it; asked again later
            return False
        self.source.accepted(data)
        return True
