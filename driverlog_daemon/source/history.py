"""Source: history — the imports that answer, as DriverLog did, from Gerrit's whole history (docs/history.md).

An import's work lives in the file (``import_work``, planned by :mod:`registry_apply`); :class:`Importer` does it
one step at a time — one page of one ``gerrit query``, or one driver judged again — on the backfill worker's
thread, between gap backfills (a gap is fresher news, so gaps go first), and each step's results and progress
commit together through the writer. A restart resumes at the last step committed; a step given twice only finds
its rows present (natural keys).

For each group of up to 10 CI accounts:

* the window: every change they commented on updated in the last ``[history] days``, all their messages (an old
  comment on a change updated lately is a mark's candidate too);
* the mark search: their merged changes updated before that, newest first, until every target pair (each of
  their drivers x each active release, and each pair that has a mark) has a mark newer than the rows left: a
  candidate in a change updated at L was written at or before L, so nothing further back can beat it;
* each phase pages by ``before:`` (the oldest row read) and ends by reading again the rows updated since it began:
  a change updated meanwhile leaves the rows still to read rather than shifting them, and is found there.

Review projects' merges over the window are read the same way (the coverage of merged changes needs them).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from driverlog_daemon.logs import get_logger
from driverlog_daemon.model import DONE, FINAL, SEARCH, WINDOW, ChangeFact, CommentAdded, ImportStep, Work
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.source.query import (
    ACCOUNTS_PER_QUERY,
    PROJECTS_PER_QUERY,
    Exec,
    comments_from_row,
    fact_from_row,
    fetch,
    history_query_text,
    last_updated,
    page,
    projects_query_text,
)
from driverlog_daemon.store import reads_history
from driverlog_daemon.store.import_plan import target_releases
from driverlog_daemon.store.reads import Reader
from driverlog_daemon.store.reads_history import PendingImport
from driverlog_daemon.store.writer import Writer

log = get_logger("driverlog.history")

PAGE_SIZE = 500  # Gerrit's default query limit; a server that answers fewer rows a page is paged on all the same
STEP_TIMEOUT = 300.0  # seconds a step waits for its commit


class Importer:
    """Runs the file's history imports a step at a time (:meth:`step`) on its own thread, while no gap backfill is
    running or due (``quiet``: gaps go first; the backfill worker calls :meth:`wake` when it is done)."""

    def __init__(self, reader: Reader, registry: Callable[[], Registry], writer: Writer, *,
                 executor: Callable[[], Exec | None] = lambda: None, quiet: Callable[[], bool] = lambda: True,
                 page_size: int = PAGE_SIZE, accounts_per_query: int = ACCOUNTS_PER_QUERY,
                 clock: Callable[[], float] = time.time, retry_base: float = 1.0, retry_cap: float = 60.0) -> None:
        self.reader, self.registry, self.writer = reader, registry, writer
        self.executor, self.quiet = executor, quiet
        self.page_size, self.accounts_per_query, self.clock = page_size, accounts_per_query, clock
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self._wake = threading.Condition()
        self._ready = True  # there may be work (until a step finds none that can run now)
        self._stopped = False
        self._not_before = 0.0  # after a failed step (monotonic)
        self._delay = retry_base
        self._thread = threading.Thread(target=self._run, name="driverlog-history", daemon=True)
        self._ties: dict[tuple[Any, ...], int] = {}  # rows already read at a page's last second, when a page was
        #                                              all of one second (--start goes past them)
        self.steps = 0  # steps run (tests, STATUS)
        self._throttled: Callable[[], float] = lambda: 0.0
        self._throttled_at = 0.0

    # --------------------------------------------------------------------------------------------- thread

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the step running, if any; True when the thread ended within ``timeout``."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wake(self) -> None:
        """An import was planned, Gerrit is reachable again, or a gap backfill is done: look for a step."""
        with self._wake:
            self._ready = True
            self._wake.notify_all()

    def _due(self) -> bool:
        return self._ready and time.monotonic() >= self._not_before and self.quiet()

    def _run(self) -> None:
        while True:
            with self._wake:
                # Ready but not quiet waits for a wake (the backfill worker's on_idle), not a zero timeout: that spins.
                now = time.monotonic()
                timeout = self._not_before - now if self._ready and now < self._not_before else None
                self._wake.wait_for(lambda: self._stopped or self._due(), timeout)
                if self._stopped:
                    return
                if not self._due():
                    continue
            execute = self.executor()
            try:
                ran = self.step(execute, throttled=functools.partial(getattr, execute, "throttled", 0.0))
            except Exception:  # recorded on the import and logged; tried again after a growing delay
                with self._wake:
                    self._not_before = time.monotonic() + self._delay
                    self._delay = min(self.retry_cap, self._delay * 2)
                continue
            with self._wake:
                self._delay = self.retry_base
                if not ran:
                    self._ready = False  # until a plan, a connection or a backfill wakes it

    def pending(self) -> list[PendingImport]:
        with self.reader.snapshot() as conn:
            return reads_history.pending(conn)

    def step(self, execute: Exec | None, throttled: Callable[[], float] = lambda: 0.0) -> bool:
        """One step of the oldest work that can run now (``execute``: runs one ``gerrit query`` page; None: no
        connection, so only the steps that need none; ``throttled``: the seconds its queries waited for the query
        budget so far). False when there was none. A step that fails is recorded on its import and raised: nothing
        of it is committed, and it is tried again."""
        self._throttled, self._throttled_at = throttled, throttled()
        imports = self.pending()
        current: PendingImport | None = None
        try:
            for current in imports:
                if self._one(current, imports, execute):
                    return True
        except Exception as exc:
            if current is not None:
                self.writer.import_failed(current.id, f"{type(exc).__name__}: {exc}")
                log.error("history_step_failed", import_id=current.id, error=f"{type(exc).__name__}: {exc}")
            raise
        return False

    def _one(self, imp: PendingImport, imports: list[PendingImport], execute: Exec | None) -> bool:
        """A step of ``imp`` (a rejudge of any import's first); False when it has none that can run now."""
        for other in imports:  # a registry change's drivers judged again first: quick, and what the change is for
            for w in other.work:
                if w.kind == "rejudge" and w.phase != FINAL:
                    return self._rejudge(other, w, FINAL)
        queries = [w for w in imp.work if w.kind in ("account", "project")]
        if queries and execute is None:
            return False
        for kind, phase, run in (("account", WINDOW, self._window), ("project", WINDOW, self._projects),
                                 ("account", SEARCH, self._search)):
            group = self._group(w for w in queries if w.kind == kind and w.phase == phase)
            if group:
                assert execute is not None
                run(imp, group, execute)
                self.steps += 1
                return True
        final = [w for w in imp.work if w.kind == "rejudge" and w.phase == FINAL]
        if final and not queries:
            return self._rejudge(imp, final[0], DONE)
        return False

    def _group(self, work: Any) -> list[Work]:
        """Up to ``accounts_per_query`` rows at the same place, to be read by one query."""
        rows: list[Work] = list(work)
        if not rows:
            return []
        first = rows[0]
        return [w for w in rows if (w.position, w.reread_since) == (first.position, first.reread_since)][
            :self.accounts_per_query if first.kind == "account" else PROJECTS_PER_QUERY]

    # ----------------------------------------------------------------------------------------------- steps

    def _rejudge(self, imp: PendingImport, w: Work, then: str) -> bool:
        step = ImportStep(imp.id, work=(w._replace(phase=then),))
        changed = self.writer.rejudge(int(w.name), step).result(timeout=STEP_TIMEOUT)
        log.info("history_rejudged", import_id=imp.id, driver_id=int(w.name), changed=changed,
                 final=then == DONE)
        self.steps += 1
        return True

    def _window(self, imp: PendingImport, group: list[Work], execute: Exec) -> None:
        accounts = [w.name for w in group]
        query = history_query_text(accounts, after=imp.since, before=group[0].position, page_size=self.page_size)
        rows, end, position, pages = self._page(execute, ("window", imp.id, *accounts), query, group[0].position)
        reread = group[0].reread_since
        if reread is None:  # the first page: rows updated after it are read again when the window ends
            reread = max((t for t in map(last_updated, rows) if t is not None), default=imp.since)
        comments, facts = self._messages(rows)
        if end:
            again = self._again(execute, history_query_text(accounts, after=reread, page_size=self.page_size))
            comments += again.comments
            facts += again.facts
            queries, pages = 1 + again.queries, pages + again.pages
            work = tuple(w._replace(phase=SEARCH, position=imp.since, reread_since=reread) for w in group)
        else:
            queries, work = 1, tuple(w._replace(position=position, reread_since=reread) for w in group)
        self._commit(imp, comments, facts, len(rows), queries, pages, work)

    def _projects(self, imp: PendingImport, group: list[Work], execute: Exec) -> None:
        projects = [w.name for w in group]
        query = projects_query_text(projects, after=imp.since, before=group[0].position, page_size=self.page_size)
        rows, end, position, pages = self._page(execute, ("projects", imp.id, *projects), query, group[0].position,
                                                comments=False)
        reread = group[0].reread_since
        if reread is None:
            reread = max((t for t in map(last_updated, rows) if t is not None), default=imp.since)
        facts = [f for f in map(fact_from_row, rows) if f is not None]
        if end:
            again = self._again(execute, projects_query_text(projects, after=reread, page_size=self.page_size))
            facts += again.facts
            queries, pages = 1 + again.queries, pages + again.pages
            work = tuple(w._replace(phase=DONE) for w in group)
        else:
            queries, work = 1, tuple(w._replace(position=position, reread_since=reread) for w in group)
        self._commit(imp, [], facts, len(rows), queries, pages, work)

    def _search(self, imp: PendingImport, group: list[Work], execute: Exec) -> None:
        registry = self.registry()
        bound = {d.key: d.ci.account for d in registry.drivers if d.ci is not None}
        with self.reader.snapshot() as conn:
            keys = {i: (p, v, n) for i, p, v, n in conn.execute("SELECT id, project_id, vendor, name FROM drivers")}
            marks = reads_history.mark_times(conn, [d for w in group for d in w.drivers])
        targets = [r.id for r in target_releases(registry)]
        position = group[0].position
        assert position is not None
        searching, found = [], []
        for w in group:  # the drivers still bound to this account (the registry may have changed since the plan)
            drivers = [d for d in w.drivers if d in keys and bound.get(keys[d]) == w.name]
            pairs = {(d, r) for d in drivers for r in targets} | {p for p in marks if p[0] in drivers}
            floor = imp.search_floor is not None and position < imp.search_floor
            if floor or all(marks.get(p, -1) > position for p in pairs):
                found.append(w)  # nothing further back can beat the marks it has (or the search may not go on)
            else:
                searching.append(w)
        comments: list[CommentAdded] = []
        facts: list[ChangeFact] = []
        rows_read = queries = pages = 0
        work: list[Work] = []
        if searching:
            accounts = [w.name for w in searching]
            query = history_query_text(accounts, before=position, merged=True, page_size=self.page_size)
            rows, end, after, pages = self._page(execute, ("search", imp.id, *accounts), query, position)
            rows_read, queries = len(rows), 1
            comments, facts = self._messages(rows)
            if end:
                found += searching
            else:
                work += [w._replace(position=after) for w in searching]
        if found:  # the merged changes updated since the search began left the rows it read: read them again
            since = found[0].reread_since if found[0].reread_since is not None else position
            again = self._again(execute, history_query_text([w.name for w in found], after=since, merged=True,
                                                            page_size=self.page_size))
            comments += again.comments
            facts += again.facts
            queries, pages = queries + again.queries, pages + again.pages
            work += [w._replace(phase=DONE) for w in found]
        self._commit(imp, comments, facts, rows_read, queries, pages, tuple(work))

    # ----------------------------------------------------------------------------------------------- helpers

    def _page(self, execute: Exec, key: tuple[Any, ...], query: str, position: int | None, *,
              comments: bool = True) -> tuple[list[dict[str, Any]], bool, int | None, int]:
        """One page: (rows, the end reached, the position the next page reads back from, pages run)."""
        start = self._ties.get((*key, position), 0)
        rows, more = page(execute, query, start, comments=comments)
        oldest = min((t for t in map(last_updated, rows) if t is not None), default=None)
        end = not rows or not more
        if end or oldest is None:
            return rows, True, position, 1
        # Rows at the page's oldest second are read again by the next page (before: is inclusive; the natural keys
        # make that harmless); a page all of one second goes on past them with --start instead.
        self._ties.pop((*key, position), None)
        if oldest == position:
            self._ties[(*key, position)] = start + len(rows)
        return rows, False, oldest, 1

    def _messages(self, rows: Sequence[dict[str, Any]]) -> tuple[list[CommentAdded], list[ChangeFact]]:
        """Every registered CI account's messages on the rows (all of them: kept, and judged), and the rows' state."""
        accounts = self.registry().ci_accounts
        comments = [c for row in rows for c in comments_from_row(row, accounts, 0)]
        return comments, [f for f in map(fact_from_row, rows) if f is not None]

    def _again(self, execute: Exec, query: str) -> Any:
        """A re-read of the rows updated since a phase began (paged as backfill pages: rows moving to the front are
        read again)."""
        return fetch(execute, (), 0, queries=[query], messages_since=0, keep=self.registry().ci_accounts,
                     page_size=self.page_size)

    def _commit(self, imp: PendingImport, comments: list[CommentAdded], facts: list[ChangeFact], rows: int,
                queries: int, pages: int, work: tuple[Work, ...]) -> None:
        throttled = self._throttled() - self._throttled_at
        step = ImportStep(imp.id, queries=queries, commands=pages, changes_read=rows, ci_messages=len(comments),
                          throttled_seconds=throttled, work=work)
        result = self.writer.put_import(comments, facts, step, context="import" if imp.kind == "first"
                                        else "registry").result(timeout=STEP_TIMEOUT)
        log.info("history_step", import_id=imp.id, kind=imp.kind, queries=queries, pages=pages, rows=rows,
                 ci_messages=len(comments),
                 recorded=result.inserted, already_present=result.already_present,
                 done=[w.name for w in work if w.phase == DONE][:20])

