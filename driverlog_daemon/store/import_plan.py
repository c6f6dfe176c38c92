"""What a history import has to do, on plain data: the first start's, and a registry change's (docs/history.md).

The first start imports, for every CI account, its comments over the window (``[history] days``), the review
projects' merges over the same window, then searches older merged changes for the marks still missing. A registry
change does the same for the changed bindings alone — an account or project the file already follows since some
time is searched only further back than that — and first judges again what the file holds for each changed
driver.
"""

from __future__ import annotations

from collections.abc import Mapping

from driverlog_daemon.model import FIRST, SEARCH, WINDOW, Work
from driverlog_daemon.registry.changes import RegistryChanges
from driverlog_daemon.registry.load import Registry, Release
from driverlog_daemon.store.import_ledger import Plan

DAY = 86400


def target_releases(registry: Registry) -> tuple[Release, ...]:
    """The releases the mark search looks for, as DriverLog's poll did: the active ones (their stable and series
    branches, and master in their time); a registry that marks none active: its newest release."""
    active = tuple(r for r in registry.releases if r.active)
    if active:
        return active
    return (max(registry.releases, key=lambda r: r.start_epoch),) if registry.releases else ()


def _floor(now: float, mark_search_days: float) -> int | None:
    return int(now - mark_search_days * DAY) if mark_search_days > 0 else None


def first(registry: Registry, ids: Mapping[tuple[str, str, str], int], now: float, days: float,
          mark_search_days: float) -> Plan:
    """Every binding: each account's window and mark search, each review project's merges."""
    since = int(now - days * DAY)
    work = [Work("account", account, tuple(sorted(ids[d.key] for d in drivers)), WINDOW)
            for account, drivers in sorted(registry.by_account.items())]
    work += [Work("project", project, (), WINDOW) for project in sorted(registry.review_projects)]
    return Plan("first", since, _floor(now, mark_search_days), tuple(work))


def after_change(registry: Registry, changes: RegistryChanges, ids: Mapping[tuple[str, str, str], int],
                 imported: Mapping[tuple[str, str], int], now: float, days: float, mark_search_days: float,
                 gerrit_now: int) -> Plan:
    """The changed bindings: each driver judged again from the kept comments, its account's window when the file
    does not follow that account yet (else only the search, from where the file's knowledge starts), and its
    review project's merges when the file does not follow that project yet."""
    since = int(now - days * DAY)
    drivers = {d.key: d for d in registry.drivers}
    work: list[Work] = []
    by_account: dict[str, list[int]] = {}
    projects: set[str] = set()
    for change in changes.bindings:
        driver = drivers[change.key]
        assert driver.ci is not None
        driver_id = ids[change.key]
        work.append(Work("rejudge", str(driver_id), (driver_id,), FIRST))
        by_account.setdefault(driver.ci.account, []).append(driver_id)
        if ("project", driver.review_project) not in imported:
            projects.add(driver.review_project)
    for account, driver_ids in sorted(by_account.items()):
        known = imported.get(("account", account))
        if known is None:
            work.append(Work("account", account, tuple(sorted(driver_ids)), WINDOW))
        else:  # the file holds the account's comments since `known`: the search starts there
            work.append(Work("account", account, tuple(sorted(driver_ids)), SEARCH, position=known,
                             reread_since=gerrit_now))
    work += [Work("project", project, (), WINDOW) for project in sorted(projects)]
    return Plan("registry", since, _floor(now, mark_search_days), tuple(work))
