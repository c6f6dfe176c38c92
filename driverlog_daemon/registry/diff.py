"""What one registry changes against another, driver by driver, on plain registries: the words of
``driverlog-daemon registry diff``, of ``/registry`` and of ``/api/1.0/registry`` (docs/registry.md).

A driver is named by DriverLog's natural key (project_id, vendor, name); a changed driver lists the registry's own
field names that differ (``ci.success_pattern``, ``releases``, …). Maintainers are compared but never shown: the
diff says ``maintainers`` changed, not to what (no e-mail address leaves the file). Which CI bindings change
meaning, and so reach the past, is :func:`registry.changes.compare`'s answer, given beside.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from driverlog_daemon.registry.changes import RegistryChanges, compare
from driverlog_daemon.registry.load import Driver, Registry

Key = tuple[str, str, str]

# A driver's fields as the registry names them, and how to read each from a Driver
_FIELDS: tuple[tuple[str, Any], ...] = (
    ("description", lambda d: d.description),
    ("wiki", lambda d: d.wiki),
    ("repo", lambda d: d.repo),
    ("releases", lambda d: d.releases),
    ("maintainers", lambda d: tuple(sorted(tuple(sorted(m.items())) for m in d.maintainers))),
    ("ci", lambda d: d.ci is not None),
    ("ci.id", lambda d: d.ci.account if d.ci else None),
    ("ci.success_pattern", lambda d: d.ci.success_pattern if d.ci else None),
    ("ci.failure_pattern", lambda d: d.ci.failure_pattern if d.ci else None),
    ("verification", lambda d: d.verification),
)


class DriverChange(NamedTuple):
    key: Key
    fields: tuple[str, ...]  # the registry's names of the fields that differ, in the registry's order


class RegistryDiff(NamedTuple):
    added: tuple[Key, ...]
    removed: tuple[Key, ...]
    changed: tuple[DriverChange, ...]
    releases_added: tuple[str, ...]
    releases_removed: tuple[str, ...]
    releases_changed: tuple[str, ...]  # start, series or active differ
    projects_added: tuple[str, ...]
    projects_removed: tuple[str, ...]
    bindings: RegistryChanges  # the CI bindings whose meaning changed (they are judged again)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.releases_added or self.releases_removed
                    or self.releases_changed or self.projects_added or self.projects_removed)


def changed_fields(old: Driver, new: Driver) -> tuple[str, ...]:
    fields = tuple(name for name, read in _FIELDS if read(old) != read(new))
    if "ci" in fields:  # a binding added or removed: its parts are implied
        fields = tuple(f for f in fields if not f.startswith("ci."))
    return fields


def diff(old: Registry | None, new: Registry) -> RegistryDiff:
    """What ``new`` changes against ``old`` (None: nothing before, every driver is added)."""
    before = {d.key: d for d in old.drivers} if old is not None else {}
    after = {d.key: d for d in new.drivers}
    changed = tuple(DriverChange(k, f) for k, d in after.items() if k in before
                    for f in [changed_fields(before[k], d)] if f)
    old_releases = {r.id: (r.start_epoch, r.series, r.active) for r in old.releases} if old is not None else {}
    new_releases = {r.id: (r.start_epoch, r.series, r.active) for r in new.releases}
    old_projects = set(old.projects) if old is not None else set()
    return RegistryDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple(sorted(changed)),
        releases_added=tuple(r for r in new_releases if r not in old_releases),
        releases_removed=tuple(r for r in old_releases if r not in new_releases),
        releases_changed=tuple(r for r in new_releases if r in old_releases and old_releases[r] != new_releases[r]),
        projects_added=tuple(sorted(set(new.projects) - old_projects)),
        projects_removed=tuple(sorted(old_projects - set(new.projects))),
        bindings=compare(old, new),
    )


def name(key: Key) -> str:
    return "/".join(key)


def lines(d: RegistryDiff) -> list[str]:
    """One line a change, each naming its driver, release or project: ``+`` added, ``-`` removed, ``~`` changed."""
    out = [f"+ driver {name(k)}" for k in d.added]
    out += [f"- driver {name(k)}" for k in d.removed]
    out += [f"~ driver {name(c.key)}: {', '.join(c.fields)}" for c in d.changed]
    out += [f"+ release {r}" for r in d.releases_added]
    out += [f"- release {r}" for r in d.releases_removed]
    out += [f"~ release {r}: start, series or active" for r in d.releases_changed]
    out += [f"+ project {p}" for p in d.projects_added]
    out += [f"- project {p}" for p in d.projects_removed]
    out += [f"! binding {name(b.key)}: judged again ({', '.join(b.reasons)})" for b in d.bindings.bindings
            if b.rejudge]
    remapped = sum(1 for b in d.bindings.bindings if not b.rejudge)
    if remapped:  # a release change maps every binding's results to releases again: one line, not one each
        out.append(f"! {remapped} other bindings: results mapped to releases again")
    out += [f"! binding {name(k)}: removed, its marks go" for k in d.bindings.removed]
    return out


def driver_object(key: Key) -> dict[str, str]:
    return {"project_id": key[0], "vendor": key[1], "name": key[2]}


def as_json(d: RegistryDiff) -> dict[str, Any]:
    """The diff as ``registry diff --json`` and ``/api/1.0/registry`` give it."""
    return {
        "drivers": {"added": [driver_object(k) for k in d.added],
                    "removed": [driver_object(k) for k in d.removed],
                    "changed": [{**driver_object(c.key), "fields": list(c.fields)} for c in d.changed]},
        "releases": {"added": [r.lower() for r in d.releases_added],
                     "removed": [r.lower() for r in d.releases_removed],
                     "changed": [r.lower() for r in d.releases_changed]},
        "projects": {"added": list(d.projects_added), "removed": list(d.projects_removed)},
        "bindings": {"judged_again": [{**driver_object(b.key), "reasons": list(b.reasons)}
                                      for b in d.bindings.bindings],
                     "removed": [driver_object(k) for k in d.bindings.removed]},
    }


def summary(d: RegistryDiff) -> str:
    """One line: how many of each (the ``/registry`` page's versions list)."""
    parts = [f"{len(d.added)} added", f"{len(d.removed)} removed", f"{len(d.changed)} changed"]
    text = "drivers: " + ", ".join(parts)
    if d.bindings.bindings or d.bindings.removed:
        n = len(d.bindings.bindings)
        text += f"; {n} CI binding{'s' if n != 1 else ''} judged again"
        if d.bindings.removed:
            text += f", {len(d.bindings.removed)} removed"
    releases = len(d.releases_added) + len(d.releases_removed) + len(d.releases_changed)
    if releases:
        text += f"; {releases} releases"
    return text
