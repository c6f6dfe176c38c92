"""``gerrit query`` over SSH, as backfill uses it: the query texts, paging with the re-reads of rows that moved, rows
turned into CI review messages and change facts, and a budget of queries per minute.

It asks for the changes commented on by the registered CI accounts, a few accounts per query joined with ``OR``,
paging with ``--start`` while ``moreChanges``, and turns each CI review message (``Patch Set N: …``) at or after
``since`` into a :class:`CommentAdded`. Every change row also says the change's state (``status``,
``currentPatchSet``): a :class:`ChangeFact`. So that a merge that happened while the daemon was away is known, it
also asks for the merged changes of the registry's review projects in the window, and by number for changes known
to be merged whose merged patch set is not known yet (a file upgraded from schema version 1, a merge seen only in a
comment's change status). Pure but for the command runner it is given (``execute``). The re-read rule, and why it
misses nothing, is in :func:`fetch`.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from driverlog_daemon.match.rules import message_patch_set
from driverlog_daemon.model import Account, Change, ChangeFact, CommentAdded
from driverlog_daemon.parse.bounds import in_range, in_time_range, utc_text, valid_text

log = structlog.get_logger("driverlog.query")

ACCOUNTS_PER_QUERY = 10
PROJECTS_PER_QUERY = 10
CHANGES_PER_QUERY = 50
PAGE_SIZE = 200
MAX_PAGES = 1000  # a safety stop against a server that always says moreChanges
MAX_REPASSES = 20  # a safety stop (per backfill): each re-pass reads only the rows moved during the one before


class BackfillError(Exception):
    pass


def gerrit_time(epoch: int) -> str:
    return utc_text(epoch, "%Y-%m-%d %H:%M:%S +0000")


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


def history_query_text(accounts: Sequence[str], *, after: int | None = None, before: int | None = None,
                       merged: bool = False, page_size: int = PAGE_SIZE) -> str:
    """The accounts' changes (merged ones only, for the mark search) updated in ``[after, before]``: the import pages
    by ``before:`` (the oldest row read), so that a change updated meanwhile leaves the rows still to read instead
    of shifting them (it is read again at the end, with the rows updated since the phase began)."""
    terms = [_any("commentby", accounts)]
    if merged:
        terms.insert(0, "status:merged")
    if after is not None:
        terms.append(f'after:"{gerrit_time(after)}"')
    if before is not None:
        terms.append(f'before:"{gerrit_time(before)}"')
    return " ".join([*terms, f"limit:{page_size}"])


def projects_query_text(projects: Sequence[str], *, after: int, before: int | None = None,
                        page_size: int = PAGE_SIZE) -> str:
    """The projects' merged changes updated in ``[after, before]`` (the import's window of merges)."""
    bound = f' before:"{gerrit_time(before)}"' if before is not None else ""
    return f'status:merged {_any("project", projects)} after:"{gerrit_time(after)}"{bound} limit:{page_size}'


def command(query: str, start: int, *, comments: bool = True) -> str:
    """The remote command line; the query is single-quoted so Gerrit's own splitter keeps its double quotes."""
    messages = " --comments" if comments else ""
    return f"gerrit query --format=JSON{messages} --current-patch-set --start {start} '{query}'"


def page(execute: Exec, query: str, start: int = 0, *, comments: bool = True) -> tuple[list[dict[str, Any]], bool]:
    """One page of ``query`` from row ``start``: its rows and whether Gerrit has more."""
    return _page(execute(command(query, start, comments=comments)))


def newest_update(execute: Exec, accounts: Sequence[str]) -> int | None:
    """When the change a CI account commented on most recently was last updated (Gerrit's clock; one row: Gerrit
    orders rows newest-updated first), or None when there is none."""
    rows, _ = page(execute, query_text(accounts, 0, page_size=1), comments=False)
    return max((t for t in map(last_updated, rows) if t is not None), default=None)


def last_updated(row: dict[str, Any]) -> int | None:
    return _time(row.get("lastUpdated"))


def _time(value: Any) -> int | None:
    """A Gerrit time every format we write can hold (years 1970-9999), else None."""
    number = _int(value)
    return number if number is not None and in_time_range(number) else None


def _int(value: Any) -> int | None:
    """An integer the database can hold, else None (the row or message is then passed over)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if in_range(number) else None


def fact_from_row(row: dict[str, Any]) -> ChangeFact | None:
    """What a change row says of the change's state (a merged row's current patch set is the one that merged)."""
    number, updated = _int(row.get("number")), _int(row.get("lastUpdated"))
    project, branch, status = _str(row.get("project")), _str(row.get("branch")), row.get("status")
    if number is None or updated is None or project is None or branch is None:
        return None
    current = row.get("currentPatchSet")
    patch_set = _int(current.get("number")) if isinstance(current, dict) else None
    merged = status == "MERGED"
    return ChangeFact(number=number, project=project, branch=branch,
                      status=status if status in ("NEW", "MERGED", "ABANDONED") else None, time=updated,
                      patch_set=patch_set, merged_patch_set=patch_set if merged else None,
                      merged_at=updated if merged else None)


def _str(value: Any) -> str | None:
    """Text the database can hold, else None."""
    return value if isinstance(value, str) and valid_text(value) else None


def comments_from_row(row: dict[str, Any], accounts: frozenset[str], since: int) -> Iterator[CommentAdded]:
    """The CI review messages of one change row of ``gerrit query`` output."""
    number = _int(row.get("number"))
    project, branch = _str(row.get("project")), _str(row.get("branch"))
    if number is None or project is None or branch is None:
        return
    change = Change(project=project, branch=branch, number=number, id=_str(row.get("id")), url=_str(row.get("url")),
                    status=_str(row.get("status")))
    for message in row.get("comments") or ():
        if not isinstance(message, dict):
            continue
        reviewer = message.get("reviewer") or {}
        username = reviewer.get("username") if isinstance(reviewer, dict) else None
        text, timestamp = _str(message.get("message")), _time(message.get("timestamp"))
        if username not in accounts or text is None or timestamp is None or timestamp < since:
            continue
        patch_set = message_patch_set(text)
        if patch_set is None:
            continue  # not a review result ("Uploaded patch set 2.", …)
        yield CommentAdded(author=Account(username=username, name=_str(reviewer.get("name")),
                                          email=_str(reviewer.get("email"))),
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
          page_size: int = PAGE_SIZE, queries: Sequence[str] | None = None, messages_since: int | None = None,
          keep: Iterable[str] | None = None) -> BackfillReport:
    """Query every account's review messages since ``since``, the merged changes of ``projects`` since then and
    the ``changes`` by number; return the messages as :class:`CommentAdded` and every row's state.

    ``queries``: run these query texts instead (the import's re-reads); ``messages_since``: keep the messages from
    then on (default ``since``; 0: all of a row's); ``keep``: the accounts whose messages are kept (default
    ``accounts``)."""
    accounts = frozenset(accounts)
    wanted = accounts if keep is None else frozenset(keep)
    report = BackfillReport(since=since)
    seen: set[tuple[int, int, str, int]] = set()
    if queries is None:
        queries = [query_text(chunk, since, page_size) for chunk in _chunks(sorted(accounts), accounts_per_query)]
        queries += [merged_query_text(chunk, since, page_size) for chunk in _chunks(sorted(set(projects)),
                                                                                     PROJECTS_PER_QUERY)]
        queries += [changes_query_text(chunk, page_size) for chunk in _chunks(sorted(set(changes)),
                                                                              CHANGES_PER_QUERY)]
    since = since if messages_since is None else messages_since
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
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds, in all

    def stop(self) -> None:
        """End any wait at once (the daemon stops): the query raises instead."""
        self._stopping.set()

    def take(self, share: float = 1.0) -> float:
        """Wait until a query may go; the seconds waited. ``share``: the part of the budget this query may use
        (the history import leaves the rest to the gap backfills, which go first). Safe from any thread."""
        if self.per_minute <= 0:
            return 0.0
        allowed = max(1, int(self.per_minute * share))
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock()
                while self._sent and self._sent[0] <= now - 60:
                    self._sent.popleft()
                if len(self._sent) < allowed:
                    self._sent.append(now)
                    self.waited += waited
                    return waited
                delay = self._sent[len(self._sent) - allowed] + 60 - now
            if self._stopping.is_set():
                raise BackfillError("stopping: the query budget was waiting")
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
        except RecursionError:  # a row nested past any change's shape: it costs only itself
            log.warning("query_row_too_deep", excerpt=raw[:120].decode("utf-8", "backslashreplace"))
            continue
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
