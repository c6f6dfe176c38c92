"""Source: backfill through ``gerrit query`` — the CI review messages and merges the live stream missed.

For a window ``[since, now]`` it asks for the changes commented on by the registered CI accounts, a few
accounts per query joined with ``OR``, paging with ``--start`` while ``moreChanges``, and turns each CI
review message (``Patch Set N: …``) at or after ``since`` into a :class:`CommentAdded` for the same
match -> store path as live events (source ``backfill``). The natural key makes overlaps harmless.

Every change row also says the change's state (``status``, ``currentPatchSet``): a :class:`ChangeFact`. So
that a merge that happened while the daemon was away is known, it also asks for the merged changes of the
registry's review projects in the window, and by number for changes known to be merged whose merged patch
set is not known yet (a file upgraded from schema version 1, a merge seen only in a comment's change status).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paramiko
import structlog

from driverlog_daemon import ssh
from driverlog_daemon.config import GerritConfig
from driverlog_daemon.match import message_patch_set
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.model import Account, BackfillRun, Change, ChangeFact, CommentAdded
from driverlog_daemon.reads import Gap
from driverlog_daemon.store import BatchResult
from driverlog_daemon.writer import Writer

log = structlog.get_logger("driverlog.backfill")

ACCOUNTS_PER_QUERY = 10
PROJECTS_PER_QUERY = 10
CHANGES_PER_QUERY = 50
PAGE_SIZE = 200
MAX_PAGES = 1000  # a safety stop against a server that always says moreChanges
MAX_REPASSES = 20  # a safety stop (per backfill): each re-pass reads only the rows moved during the one before


class BackfillError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Window:
    since: int
    capped: bool  # the gap was older than backfill_max_age_hours: events before `since` are not recovered


def window(cursor: int | None, now: int, overlap_seconds: int, max_age_seconds: int) -> Window:
    """From the stored cursor (minus the overlap) to now, but never further back than the maximum age."""
    floor = now - max_age_seconds
    if cursor is None:
        return Window(floor, False)  # first start: the initial import
    since = cursor - overlap_seconds
    return Window(floor, True) if since < floor else Window(since, False)


def gerrit_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def _any(operator: str, values: Sequence[str | int]) -> str:
    """``op:a`` or ``(op:a OR op:b …)``."""
    terms = " OR ".join(f"{operator}:{v}" for v in values)
    return f"({terms})" if len(values) > 1 else terms


def query_text(accounts: Sequence[str], since: int, page_size: int = PAGE_SIZE) -> str:
    return f'{_any("commentby", accounts)} after:"{gerrit_time(since)}" limit:{page_size}'


def merged_query_text(projects: Sequence[str], since: int, page_size: int = PAGE_SIZE) -> str:
    return f'status:merged {_any("project", projects)} after:"{gerrit_time(since)}" limit:{page_size}'


def changes_query_text(numbers: Sequence[int], page_size: int = PAGE_SIZE) -> str:
    return f'{_any("change", numbers)} limit:{page_size}'


def command(query: str, start: int) -> str:
    """The remote command line; the query is single-quoted so Gerrit's own splitter keeps its double quotes."""
    return f"gerrit query --format=JSON --comments --current-patch-set --start {start} '{query}'"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def fact_from_row(row: dict[str, Any]) -> ChangeFact | None:
    """What a change row says of the change's state (a merged row's current patch set is the one that merged)."""
    number, updated = _int(row.get("number")), _int(row.get("lastUpdated"))
    project, branch, status = row.get("project"), row.get("branch"), row.get("status")
    if number is None or updated is None or not isinstance(project, str) or not isinstance(branch, str):
        return None
    current = row.get("currentPatchSet")
    patch_set = _int(current.get("number")) if isinstance(current, dict) else None
    merged = status == "MERGED"
    return ChangeFact(number=number, project=project, branch=branch,
                      status=status if status in ("NEW", "MERGED", "ABANDONED") else None, time=updated,
                      patch_set=patch_set, merged_patch_set=patch_set if merged else None,
                      merged_at=updated if merged else None)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def comments_from_row(row: dict[str, Any], accounts: frozenset[str], since: int) -> Iterator[CommentAdded]:
    """The CI review messages of one change row of ``gerrit query`` output."""
    number = _int(row.get("number"))
    project, branch = row.get("project"), row.get("branch")
    if number is None or not isinstance(project, str) or not isinstance(branch, str):
        return
    change = Change(project=project, branch=branch, number=number, id=_str(row.get("id")), url=_str(row.get("url")),
                    status=_str(row.get("status")))
    for message in row.get("comments") or ():
        if not isinstance(message, dict):
            continue
        reviewer = message.get("reviewer") or {}
        username = reviewer.get("username") if isinstance(reviewer, dict) else None
        text, timestamp = message.get("message"), _int(message.get("timestamp"))
        if username not in accounts or not isinstance(text, str) or timestamp is None or timestamp < since:
            continue
        patch_set = message_patch_set(text)
        if patch_set is None:
            continue  # not a review result ("Uploaded patch set 2.", …)
        yield CommentAdded(author=Account(username=username, name=reviewer.get("name"), email=reviewer.get("email")),
                           change=change, patch_set=patch_set, comment=text, created_on=timestamp)


@dataclass(slots=True)
class BackfillReport:
    since: int
    queries: int = 0
    pages: int = 0  # SSH commands run: one a page
    repasses: int = 0
    changes: int = 0  # change rows read
    comments: list[CommentAdded] = field(default_factory=list)
    facts: list[ChangeFact] = field(default_factory=list)  # the state of every change row read


Exec = Callable[[str], bytes]  # runs a remote command, returns stdout (raises on a non-zero exit)


def fetch(execute: Exec, accounts: Iterable[str], since: int, *, projects: Iterable[str] = (),
          changes: Iterable[int] = (), accounts_per_query: int = ACCOUNTS_PER_QUERY,
          page_size: int = PAGE_SIZE) -> BackfillReport:
    """Query every account's review messages since ``since``, the merged changes of ``projects`` since then and
    the ``changes`` by number; return the messages as :class:`CommentAdded` and every row's state."""
    wanted = frozenset(accounts)
    report = BackfillReport(since=since)
    seen: set[tuple[int, int, str, int]] = set()
    queries = [query_text(chunk, since, page_size) for chunk in _chunks(sorted(wanted), accounts_per_query)]
    queries += [merged_query_text(chunk, since, page_size) for chunk in _chunks(sorted(set(projects)),
                                                                                 PROJECTS_PER_QUERY)]
    queries += [changes_query_text(chunk, page_size) for chunk in _chunks(sorted(set(changes)), CHANGES_PER_QUERY)]
    for query in queries:
        report.queries += 1
        # Rows come newest-updated first and page by offset, so a change updated while we page moves to the
        # front, past pages already read, and its earlier messages would be skipped. Every row that moves was
        # updated after the pass's first page was answered, so a re-pass reads again from the front every row
        # updated since then (lastUpdated at least the newest on that first page). A pass answered within its first
        # page is one consistent answer: nothing can have moved past it, and the query is done. A re-pass that
        # needs more pages (many rows moved) is itself re-read the same way.
        newest, one_page = _pass(execute, query, wanted, since, report, seen, stop_below=None)
        while not one_page and newest is not None:
            if report.repasses >= MAX_REPASSES:  # the gap stays open and is retried: never closed unproven
                raise BackfillError(f"rows kept moving after {MAX_REPASSES} re-reads of {query!r}")
            report.repasses += 1
            newest, one_page = _pass(execute, query, wanted, since, report, seen, stop_below=newest)
    return report


def _pass(execute: Exec, query: str, wanted: frozenset[str], since: int, report: BackfillReport,
          seen: set[tuple[int, int, str, int]], stop_below: int | None) -> tuple[int | None, bool]:
    """Page through ``query`` (stopping at the first row updated before ``stop_below``). Returns the newest
    lastUpdated on its first page, and whether the pass was answered within that first page."""
    start = 0
    newest: int | None = None
    for page_number in range(MAX_PAGES):
        rows, more = _page(execute(command(query, start)))
        report.pages += 1
        report.changes += len(rows)
        for row in rows:
            updated = _int(row.get("lastUpdated"))
            if page_number == 0 and updated is not None and (newest is None or updated > newest):
                newest = updated
            if stop_below is not None and updated is not None and updated < stop_below:
                return newest, page_number == 0
            fact = fact_from_row(row)
            if fact is not None:
                report.facts.append(fact)
            for c in comments_from_row(row, wanted, since):
                key = (c.change.number, c.patch_set, c.author.username or "", c.created_on)
                if key not in seen:  # rows shift between pages while changes are updated
                    seen.add(key)
                    report.comments.append(c)
        if not more or not rows:
            return newest, page_number == 0
        start += len(rows)
    return newest, False


class QueryBudget:
    """At most ``per_minute`` queries in any 60 seconds (0: no ceiling): a query over the budget waits for its
    turn — a backfill is delayed, never cut short. Shared by every backfill of the daemon."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], object] | None = None) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._stopping = threading.Event()
        self.wait = wait or self._stopping.wait
        self._sent: collections.deque[float] = collections.deque()
        self.waited = 0.0  # seconds, in all

    def stop(self) -> None:
        """End any wait at once (the daemon stops): the query raises instead."""
        self._stopping.set()

    def take(self) -> float:
        """Wait until a query may go; the seconds waited."""
        if self.per_minute <= 0:
            return 0.0
        waited = 0.0
        while True:
            now = self.clock()
            while self._sent and self._sent[0] <= now - 60:
                self._sent.popleft()
            if len(self._sent) < self.per_minute:
                self._sent.append(now)
                self.waited += waited
                return waited
            if self._stopping.is_set():
                raise BackfillError("stopping: the query budget was waiting")
            delay = self._sent[0] + 60 - now
            self.wait(delay)
            waited += delay


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _page(output: bytes) -> tuple[list[dict[str, Any]], bool]:
    rows: list[dict[str, Any]] = []
    more = False
    for raw in output.splitlines():
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise BackfillError(f"gerrit query wrote a line that is not JSON: {raw[:120]!r}") from exc
        if not isinstance(obj, dict):
            continue
        kind = obj.get("type")
        if kind == "stats":
            more = bool(obj.get("moreChanges"))
        elif kind == "error":
            raise BackfillError(f"gerrit query failed: {obj.get('message')}")
        else:
            rows.append(obj)
    return rows, more


# ------------------------------------------------------------------------------------------------ worker


class Backfiller:
    """Runs backfills on its own thread (so the live stream keeps flowing), coalescing requests.

    A backfill covers the open gaps (``store.open_gaps``): its window starts at the oldest one's ``since`` (Gerrit's
    clock) minus the overlap, and when its results are committed the gaps it covered close in the same
    transaction. One that fails leaves them open: it is retried with backoff (1 s doubling to 60 s) on the current
    connection until one succeeds, and a restart finds them in the database. ``request`` schedules one after the
    gap it is for has been recorded (``after``); ``run_now`` runs one and waits (the stall check needs the answer).
    """

    def __init__(self, gerrit: GerritConfig, accounts: Callable[[], Iterable[str]], writer: Writer,
                 metrics: Metrics, cursor: Callable[[], int | None], *,
                 projects: Callable[[], Iterable[str]] = tuple, unknown_merges: Callable[[], Iterable[int]] = tuple,
                 gaps: Callable[[], list[Gap]] = list, client: Callable[[], paramiko.SSHClient | None] = lambda: None,
                 clock: Callable[[], float] = time.time, command_timeout: float = 120.0,
                 accounts_per_query: int = ACCOUNTS_PER_QUERY, page_size: int = PAGE_SIZE,
                 retry_base: float = 1.0, retry_cap: float = 60.0, budget: QueryBudget | None = None) -> None:
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
        self.command_timeout = command_timeout
        self.accounts_per_query = accounts_per_query
        self.page_size = page_size
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self.budget = budget or QueryBudget(gerrit.max_queries_per_minute)
        self._retry_delay = retry_base
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: tuple[paramiko.SSHClient, str, Future[Any] | None] | None = None
        self._stopped = False
        self._busy = False
        self._failed = False
        self.completed = 0  # backfills finished (ok or not), for tests and STATUS
        self.last_report: BackfillReport | None = None
        self._thread = threading.Thread(target=self._run, name="driverlog-backfill", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.budget.stop()
        with self._wake:
            self._stopped = True
            self._wake.notify_all()

    def request(self, client: paramiko.SSHClient, trigger: str, after: Future[Any] | None = None) -> None:
        """Schedule a backfill on ``client``, once ``after`` (the gap being recorded) is done."""
        with self._wake:
            self._pending = (client, trigger, after)  # the newer request covers the older: its gap came later
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
                    request: tuple[paramiko.SSHClient, str, Future[Any] | None] = (client, "retry", None)
                else:
                    request = self._pending
                self._pending = None
                self._busy = True
            client, trigger, after = request
            try:
                if after is not None:
                    after.result(timeout=self.command_timeout)
                self.run_now(client, trigger)
            except Exception:  # logged and counted in run_now; retried with backoff while gaps stay open
                with self._lock:
                    self._failed = True
                    self._retry_delay = min(self.retry_cap, self._retry_delay * 2) if trigger == "retry" \
                        else self.retry_base
            else:
                with self._lock:
                    self._failed = False
                    self._retry_delay = self.retry_base
            finally:
                with self._lock:
                    self._busy = False
                    self.completed += 1

    def run_now(self, client: paramiko.SSHClient, trigger: str) -> BatchResult:
        """Backfill the open gaps (or, with none, from the stored cursor) minus the overlap; the writer's result."""
        now = int(self.clock())
        overlap = int(self.gerrit.backfill_overlap_minutes * 60)
        max_age = int(self.gerrit.backfill_max_age_hours * 3600)
        gaps = self.gaps()
        up_to = max((g.id for g in gaps), default=None)
        w = window(min(g.since for g in gaps) if gaps else self.cursor(), now, overlap, max_age)
        self.metrics.backfills.labels(trigger).inc()
        if w.capped:
            self.metrics.backfill_gap_exceeded.inc()
            log.warning("backfill_gap_exceeds_max_age", trigger=trigger,
                        max_age_hours=self.gerrit.backfill_max_age_hours, since=gerrit_time(w.since))
        started, started_at = time.monotonic(), self.clock()
        throttled = 0.0

        def execute(cmd: str) -> bytes:
            nonlocal throttled
            waited = self.budget.take()
            if waited:
                throttled += waited
                self.metrics.backfill_throttled.inc(waited)
                log.info("backfill_throttled", trigger=trigger, waited_seconds=round(waited, 3),
                         max_queries_per_minute=self.budget.per_minute)
            self.metrics.gerrit_commands.labels("query").inc()
            out = ssh.run(client, cmd, self.command_timeout)
            if out.status != 0:
                raise ssh.CommandError(cmd, out.status, out.stderr)
            return out.stdout

        try:
            report = fetch(execute, list(self.accounts()), w.since, projects=list(self.projects()),
                           changes=list(self.unknown_merges()), accounts_per_query=self.accounts_per_query,
                           page_size=self.page_size)
            run = BackfillRun(trigger, w.since, started_at, report.queries, report.pages, report.repasses,
                              report.changes, len(report.comments), throttled)
            result = self.writer.put_backfill(report.comments, report.facts, close_gaps_up_to=up_to,
                                              run=run).result(timeout=self.command_timeout)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.metrics.backfill_failures.inc()
            if up_to is not None:
                self.writer.gap_failed(up_to, error)
            log.error("backfill_failed", trigger=trigger, since=gerrit_time(w.since), error=error,
                      open_gaps=len(gaps))
            raise
        self.metrics.backfill_messages.inc(len(report.comments))
        self.last_report = report
        log.info("backfill_done", trigger=trigger, since=gerrit_time(w.since), queries=report.queries,
                 commands=report.pages, pages=report.pages, repasses=report.repasses, changes=report.changes,
                 throttled_seconds=round(throttled, 3), ci_messages=len(report.comments),
                 recorded=result.inserted, already_present=result.already_present,
                 gaps_closed=len(result.closed_gaps), seconds=round(time.monotonic() - started, 3))
        return result
