"""What a registry change means for history: which CI bindings now judge differently, on plain registries.

A binding (a driver's ``ci`` block) means: its CI account, its patterns (or the vote rule), its review project
(``repo``, else ``project_id``) and the releases its results map to (ids, series, start dates) and that the mark
search covers (``active``). When any of those changes, what the file holds for the driver must be judged again and
Gerrit asked for what the file never held; an unchanged binding costs nothing (docs/history.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from driverlog_daemon.registry.load import Driver, Registry

# Why a binding changed, in the order they are reported
NEW, ACCOUNT, PATTERNS, PROJECT, RELEASES = "new", "account", "patterns", "project", "releases"


class BindingChange(NamedTuple):
    key: tuple[str, str, str]  # the driver (project_id, vendor, name)
    reasons: tuple[str, ...]  # new, account, patterns, project, releases

    @property
    def rejudge(self) -> bool:
        """Its comments must be judged again (a verdict may differ), not only mapped to releases again."""
        return any(r != RELEASES for r in self.reasons)


class RegistryChanges(NamedTuple):
    bindings: tuple[BindingChange, ...]  # bindings of the new registry whose meaning changed
    removed: tuple[tuple[str, str, str], ...]  # drivers whose binding is gone (the driver, or its ci block)
    releases: tuple[str, ...]  # release ids added, removed, or whose series, start or active changed
    accounts_gone: frozenset[str]  # CI accounts no driver is bound to any more
    projects_gone: frozenset[str]  # review projects no binding reports on any more

    @property
    def empty(self) -> bool:
        return not (self.bindings or self.removed or self.releases)


def _releases(registry: Registry) -> Mapping[str, tuple[str | None, int, bool]]:
    return {r.id: (r.series, r.start_epoch, r.active) for r in registry.releases}


def _binding(driver: Driver) -> tuple[str, str | None, str | None, str] | None:
    if driver.ci is None:
        return None
    return driver.ci.account, driver.ci.success_pattern, driver.ci.failure_pattern, driver.review_project


def compare(old: Registry | None, new: Registry) -> RegistryChanges:
    """The changes from ``old`` (None: nothing applied before, every binding is new) to ``new``."""
    old_releases = _releases(old) if old is not None else {}
    new_releases = _releases(new)
    releases = tuple(sorted(r for r in old_releases.keys() | new_releases.keys()
                            if old_releases.get(r) != new_releases.get(r))) if old is not None else ()
    before = {d.key: _binding(d) for d in old.drivers} if old is not None else {}
    changes: list[BindingChange] = []
    for driver in new.drivers:
        now = _binding(driver)
        if now is None:
            continue
        was = before.get(driver.key)
        reasons: list[str] = []
        if was is None:
            reasons.append(NEW)
        else:
            if was[0] != now[0]:
                reasons.append(ACCOUNT)
            if was[1:3] != now[1:3]:
                reasons.append(PATTERNS)
            if was[3] != now[3]:
                reasons.append(PROJECT)
            if releases:
                reasons.append(RELEASES)
        if reasons:
            changes.append(BindingChange(driver.key, tuple(reasons)))
    present = {d.key for d in new.drivers if d.ci is not None}
    removed = tuple(sorted(k for k, b in before.items() if b is not None and k not in present))
    return RegistryChanges(
        bindings=tuple(changes), removed=removed, releases=releases,
        accounts_gone=frozenset(old.ci_accounts - new.ci_accounts) if old is not None else frozenset(),
        projects_gone=frozenset(old.review_projects - new.review_projects) if old is not None else frozenset())


def describe(changes: RegistryChanges) -> list[str]:
    """One line a change, naming the driver (the log's and the ledger's words)."""
    lines = [f"{'/'.join(c.key)}: {', '.join(c.reasons)}" for c in changes.bindings]
    lines += [f"{'/'.join(k)}: binding removed" for k in changes.removed]
    lines += [f"release {r}: added, removed or changed" for r in changes.releases]
    return lines


def keys(changes: Iterable[BindingChange]) -> list[tuple[str, str, str]]:
    return [c.key for c in changes]
