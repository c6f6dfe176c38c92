"""Source: backfill — the CI review messages and merges the live stream missed, read through ``gerrit query``.

For a window ``[since, now]`` (from the oldest open gap, or the cursor) the :class:`Backfiller` reads, on its own
thread, the registered CI accounts' review messages and the review projects' merges (:mod:`gerrit_query`), and
hands them to the writer for the same match -> store path as live events (source ``backfill``); the gaps it
covered close in the same transaction, with what it cost Gerrit recorded beside them. The natural key makes
overlaps harmless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import paramiko
import structlog

from driverlog_daemon.config import GerritConfig
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.model import BackfillRun
from driverlog_daemon.source import ssh
from driverlog_daemon.source.query import (
    ACCOUNTS_PER_QUERY,
    PAGE_SIZE,
    BackfillError,
    BackfillReport,
    QueryBudget,
    fetch,
    gerrit_time,
    newest_update,
)
from driverlog_daemon.store.reads import Gap
from driverlog_daemon.store.store import BatchResult
from driverlog_daemon.store.writer import Writer

log = structlog.get_logger("driverlog.backfill")

__all__ = ["BackfillError", "Backfiller", "Window", "fetch", "window"]


@dataclass(frozen=True, slots=True)
class Window:
    since: int
    capped: bool  # the gap was older than backfill_max_age_hours: events before `since` are not recovered


class _Request:
    """A backfill asked for: on which connection, why, after what (the gap being recorded), and who waits for it."""

    __slots__ = ("after", "client", "trigger", "waiters")

    def __init__(self, client: paramiko.SSHClient, trigger: str, after: Future[Any] | None,
                 waiters: list[Future[BatchResult]] | None = None) -> None:
        self.client, self.trigger, self.after = client, trigger, after
        self.waiters = waiters if waiters is not None else []


#: A gap that starts this little before the maximum age is not one the maximum age cuts short: a first start's gap
#: begins exactly there, and its backfill runs moments later (the overlap, and those moments, are no loss).
CAP_SLACK_SECONDS = 300


def window(cursor: int | None, now: int, overlap_seconds: int, max_age_seconds: int) -> Window:
    """From the stored cursor (minus the overlap) to now, but never further back than the maximum age (and the
    overlap); capped only when the cursor itself is older than that."""
    floor = now - max_age_seconds
    if cursor is None:
        return Window(floor, False)  # first start: the initial import
    if cursor < floor - CAP_SLACK_SECONDS:
        return Window(floor, True)
    return Window(max(cursor - overlap_seconds, floor - overlap_seconds), False)



# ------------------------------------------------------------------------------------------------ worker


class Backfiller:
    """Runs backfills on its own thread (so the live stream keeps flowing), coalescing requests.

    A backfill covers the open gaps (``store.open_gaps``): its window starts at the oldest one's ``since`` (Gerrit's
    clock) minus the overlap, and when its results are committed the gaps it covered close in the same
    transaction. One that fails leaves them open: it is retried with backoff (1 s doubling to 60 s) on the current
    connection until one succeeds, and a restart finds them in the database. ``request`` schedules one after the
    gap it is for has been recorded (``after``); ``backfill_and_wait`` schedules one and waits for its result (the
    stall check needs the answer). Every backfill runs on the worker's thread, one at a time.
    """

    def __init__(self, gerrit: GerritConfig, accounts: Callable[[], Iterable[str]], writer: Writer,
                 metrics: Metrics, cursor: Callable[[], int | None], *,
                 projects: Callable[[], Iterable[str]] = tuple, unknown_merges: Callable[[], Iterable[int]] = tuple,
                 gaps: Callable[[], list[Gap]] = list, client: Callable[[], paramiko.SSHClient | None] = lambda: None,
                 clock: Callable[[], float] = time.time, command_timeout: float = 120.0,
                 accounts_per_query: int = ACCOUNTS_PER_QUERY, page_size: int = PAGE_SIZE,
                 retry_base: float = 1.0, retry_cap: float = 60.0, budget: QueryBudget | None = None,
                 first_start: bool = False, on_idle: Callable[[], None] = lambda: None,
                 gerrit_clock: Callable[[], float | None] = lambda: None) -> None:
        self.gerrit = gerrit
        self.accounts = accounts
        self.writer = writer
        self.metrics = metrics
        self.cursor = cursor
        self.projects = projects
        self.unknown_merges = unknown_merges
        self.gaps = gaps
        self.client = client
        self.clock = clock
        self.gerrit_clock = gerrit_clock  # Gerrit's time now as the stream shows it (None: not known yet)
        self.command_timeout = command_timeout
        self.accounts_per_query = accounts_per_query
        self.page_size = page_size
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self.budget = budget or QueryBudget(gerrit.max_queries_per_minute)
        self._retry_delay = retry_base
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: _Request | None = None
        self._stopped = False
        self._busy = False
        self._failed = False
        self.completed = 0  # backfills finished (ok or not), for tests and STATUS
        self.last_report: BackfillReport | None = None
        #: the file had no cursor when the daemon started: the first start's backfill is history, like the import
        self.first_start = first_start
        self.on_idle = on_idle
        self._command_since: float | None = None  # (monotonic) a command of the worker's on the wire since then
        self._thread = threading.Thread(target=self._run, name="driverlog-backfill", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the command on the wire, if any; True when the thread ended within ``timeout``."""
        self.budget.stop()
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def request(self, client: paramiko.SSHClient, trigger: str, after: Future[Any] | None = None) -> None:
        """Schedule a backfill on ``client``, once ``after`` (the gap being recorded) is done."""
        self._schedule(_Request(client, trigger, after))

    def backfill_and_wait(self, client: paramiko.SSHClient, trigger: str, stuck_after: float) -> BatchResult:
        """Schedule a backfill and wait for its result, behind the one running if any, for as long as the worker is
        not stuck: raises ``TimeoutError`` when a command of its has been on the wire without an answer for
        ``stuck_after`` seconds (waiting for the query budget or the writer is not being stuck)."""
        answer: Future[BatchResult] = Future()
        self._schedule(_Request(client, trigger, None, [answer]))
        # futures.wait, not result(timeout): a backfill that failed with a TimeoutError of its own (a command's
        # deadline) is its answer, not a reason to keep waiting (result() raises the same type for both).
        while not futures.wait([answer], timeout=max(0.01, stuck_after / 4)).done:
            if self._stopped:  # the worker has ended: this request is never answered
                raise BackfillError("stopping: the backfill worker has ended")
            if self.stuck(stuck_after):
                raise TimeoutError(f"a backfill command has been on the wire for {stuck_after:.0f} s")
        return answer.result()

    def stuck(self, seconds: float) -> bool:
        """A command has been on the wire for ``seconds`` without an answer."""
        with self._lock:
            return self._command_since is not None and time.monotonic() - self._command_since >= seconds

    def _schedule(self, request: _Request) -> None:
        with self._wake:
            if self._pending is not None:  # the newer request covers the older (its gap came later): one answer
                request.waiters[:0] = self._pending.waiters
            self._pending = request
            self._wake.notify_all()

    def idle(self) -> bool:
        with self._lock:
            return self._pending is None and not self._busy

    def _run(self) -> None:
        while True:
            with self._wake:
                timeout = self._retry_delay if self._failed else None
                self._wake.wait_for(lambda: self._stopped or self._pending is not None, timeout)
                if self._stopped:
                    return
                if self._pending is None:  # the retry timer: the gaps are still open
                    client = self.client()
                    if client is None:
                        continue  # disconnected: the next connection's backfill covers them
                    request = _Request(client, "retry", None)
                else:
                    request = self._pending
                self._pending = None
                self._busy = True
            trigger = request.trigger
            try:
                if request.after is not None:
                    request.after.result(timeout=self.command_timeout)
                result = self._backfill(request.client, trigger)
            except Exception as exc:  # logged and counted in _backfill; retried with backoff while gaps stay open
                with self._lock:
                    self._failed = True
                    self._retry_delay = min(self.retry_cap, self._retry_delay * 2) if trigger == "retry" \
                        else self.retry_base
                for waiter in request.waiters:
                    waiter.set_exception(exc)
            else:
                with self._lock:
                    self._failed = False
                    self._retry_delay = self.retry_base
                for waiter in request.waiters:
                    waiter.set_result(result)
            finally:
                with self._lock:
                    self._busy = False
                    self.completed += 1
                self.on_idle()  # the history import waits while a gap backfill is due

    def on_the_wire(self, sent: bool) -> None:
        """A command was sent (True) or answered (False): what :meth:`stuck` judges."""
        with self._lock:
            self._command_since = time.monotonic() if sent else None

    def executor(self, client: paramiko.SSHClient, trigger: str, share: float = 1.0) -> Executor:
        """A command runner on ``client`` within the query budget (``share``: the part of it these queries may
        use), counting the commands and what they waited."""
        return Executor(self, client, trigger, share)

    def quiet(self) -> bool:
        """No gap backfill is running, waiting, or due again (a failed one's retry): the history import may step."""
        with self._lock:
            return self._pending is None and not self._busy and not self._failed

    def _backfill(self, client: paramiko.SSHClient, trigger: str) -> BatchResult:
        """Backfill the open gaps (or, with none, from the stored cursor) minus the overlap; the writer's result."""
        overlap = int(self.gerrit.backfill_overlap_minutes * 60)
        max_age = int(self.gerrit.backfill_max_age_hours * 3600)
        gaps = self.gaps()
        up_to = max((g.id for g in gaps), default=None)
        history = self.first_start and trigger == "start"
        since = None if history else min(g.since for g in gaps) if gaps else self.cursor()
        execute = self.executor(client, trigger)
        known = self.gerrit_clock()
        w = window(since, int(self.clock() if known is None else known), overlap, max_age)
        probes = 0
        if known is None and (w.capped or since is None):  # how far back it reaches rests on our clock alone
            probes = 1
            try:
                w = window(since, self._gerrit_now(execute), overlap, max_age)
            except Exception as exc:
                self._failed_backfill(trigger, w, exc, up_to, len(gaps))
                raise
        self.metrics.backfills.labels(trigger).inc()
        if w.capped:
            self.metrics.backfill_gap_exceeded.inc()
            log.warning("backfill_gap_exceeds_max_age", trigger=trigger,
                        max_age_hours=self.gerrit.backfill_max_age_hours, since=gerrit_time(w.since))
        started, started_at = time.monotonic(), self.clock()
        try:
            report = fetch(execute, list(self.accounts()), w.since, projects=list(self.projects()),
                           changes=list(self.unknown_merges()), accounts_per_query=self.accounts_per_query,
                           page_size=self.page_size)
            report.pages += probes  # the ledger's commands: every one this backfill sent
            run = BackfillRun(trigger, w.since, started_at, report.queries, report.pages, report.repasses,
                              report.changes, len(report.comments), execute.throttled, w.capped, history)
            result = self.writer.put_backfill(report.comments, report.facts, close_gaps_up_to=up_to,
                                              run=run).result(timeout=self.command_timeout)
        except Exception as exc:
            self._failed_backfill(trigger, w, exc, up_to, len(gaps))
            raise
        self.metrics.backfill_messages.inc(len(report.comments))
        self.last_report = report
        if history:
            self.first_start = False
        log.info("backfill_done", trigger=trigger, since=gerrit_time(w.since), queries=report.queries,
                 commands=report.pages, pages=report.pages, repasses=report.repasses, changes=report.changes,
                 throttled_seconds=round(execute.throttled, 3), ci_messages=len(report.comments),
                 recorded=result.inserted, already_present=result.already_present,
                 gaps_closed=len(result.closed_gaps), seconds=round(time.monotonic() - started, 3))
        return result


    def _failed_backfill(self, trigger: str, w: Window, exc: Exception, up_to: int | None, gaps: int) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.metrics.backfill_failures.inc()
        if up_to is not None:
            self.writer.gap_failed(up_to, error)
        log.error("backfill_failed", trigger=trigger, since=gerrit_time(w.since), error=error, open_gaps=gaps)

    def _gerrit_now(self, execute: Executor) -> int:
        """Gerrit's time now before the stream has shown its clock, for how far back a backfill reaches: ours,
        unless the newest change a CI account commented on is older (a daemon clock days ahead would put the whole
        window in Gerrit's future, and a first start would prove a day it never read). Reaching further back than
        needed costs queries, never results."""
        local = int(self.clock())
        newest = newest_update(execute, sorted(self.accounts())[:self.accounts_per_query])
        if newest is None or newest >= local:
            return local
        if local - newest > self.gerrit.backfill_max_age_hours * 3600:
            log.warning("clock_ahead_of_gerrit", newest_ci_change=gerrit_time(newest), ahead_seconds=local - newest,
                        hint="this host's clock may be wrong (check NTP); backfilling from Gerrit's newest change")
        return newest


class Executor:
    """Runs one ``gerrit query`` command on the connection, within the query budget, counting what it waited."""

    def __init__(self, backfiller: Backfiller, client: paramiko.SSHClient, trigger: str, share: float) -> None:
        self.backfiller, self.client, self.trigger, self.share = backfiller, client, trigger, share
        self.throttled = 0.0

    def __call__(self, cmd: str) -> bytes:
        b = self.backfiller
        waited = b.budget.take(self.share)
        if waited:
            self.throttled += waited
            b.metrics.backfill_throttled.inc(waited)
            log.info("backfill_throttled", trigger=self.trigger, waited_seconds=round(waited, 3),
                     max_queries_per_minute=b.budget.per_minute)
        b.metrics.gerrit_commands.labels("query").inc()
        b.on_the_wire(True)
        try:
            out = ssh.run(self.client, cmd, b.command_timeout)
        finally:
            b.on_the_wire(False)
        if out.status != 0:
            raise ssh.CommandError(cmd, out.status, out.stderr)
        return out.stdout
