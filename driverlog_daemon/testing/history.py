"""Gerrit history for the tests of the history import: a year or two of changes with lifecycles as Gerrit has them,
and DriverLog's marks over it worked out directly from the events, apart from the daemon's code.

Each change is created, gets patch sets one after another, people's reviews and the results of the CI accounts
bound to its project (some re-checked on the same patch set), and then merges at its current patch set, is
abandoned, or stays open; a few CI results come after the merge. Branches are master and the stable and
unmaintained branches of the registry's releases (by id and by series number), so every kind of release mapping
occurs.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from driverlog_daemon.registry.load import Registry
from driverlog_daemon.testing.faults import judge_event
from driverlog_daemon.testing.samples import PEOPLE, _ci_comment

DAY = 86400


def _account(rng: random.Random) -> dict[str, str]:
    u, n, e = rng.choice(PEOPLE)
    return {"name": n, "email": e, "username": u}


def branches(registry: Registry) -> list[str]:
    """master (most changes), then each release's stable branch by id and by series, and an unmaintained one."""
    names = ["master"] * 12
    for r in registry.releases:
        names.append(f"stable/{r.id.lower()}")
        if r.series:
            names.append(f"stable/{r.series}")
    if registry.releases:
        names.append(f"unmaintained/{registry.releases[0].id.lower()}")
    return names


def history(registry: Registry, *, days: float, changes: int, end: int, seed: int = 7,
            first_change: int = 500_000, ci_rate: float = 0.6, starts: float = 0.0,
            flips: float = 0.0) -> list[dict[str, Any]]:
    """The events of ``changes`` changes over the ``days`` before ``end`` (epoch seconds), in time order.
    ``ci_rate``: the chance a CI bound to the change's project reports on a patch set; ``starts``: the chance it
    first says it started (a comment that gives no verdict); ``flips``: the chance a recheck passes whatever the
    first result was (after a failure: a flaky job)."""
    rng = random.Random(seed)
    projects = [*sorted(registry.review_projects), "openstack/other-project"]
    by_project: dict[str, list[str]] = {}
    for account, drivers in registry.by_account.items():
        for project in {d.review_project for d in drivers}:
            by_project.setdefault(project, []).append(account)
    all_branches = branches(registry)
    events: list[dict[str, Any]] = []
    for i in range(changes):
        events.extend(_change(rng, registry, first_change + i, rng.choice(projects), rng.choice(all_branches),
                              int(end - days * DAY + rng.random() * (days * DAY - 3 * DAY)), by_project, ci_rate,
                              starts, flips))
    events = [e for e in events if e["eventCreatedOn"] < end]
    events.sort(key=lambda e: (e["eventCreatedOn"], e["change"]["number"]))
    return events


def _change(rng: random.Random, registry: Registry, number: int, project: str, branch: str, created: int,
            by_project: dict[str, list[str]], ci_rate: float, starts: float,
            flips: float) -> Iterator[dict[str, Any]]:
    owner = _account(rng)
    change: dict[str, Any] = {
        "project": project, "branch": branch, "id": f"I{rng.getrandbits(160):040x}", "number": number,
        "subject": f"Change {number}", "owner": owner, "url": f"https://review.example.org/c/{project}/+/{number}",
        "status": "NEW"}
    t = created
    patch_sets = rng.choice((1, 1, 2, 2, 3, 4))
    accounts = by_project.get(project, [])
    for ps in range(1, patch_sets + 1):
        t += rng.randint(600, 3 * DAY)
        patch_set = {"number": ps, "revision": f"{rng.getrandbits(160):040x}",
                     "ref": f"refs/changes/{number % 100:02d}/{number}/{ps}", "uploader": owner, "createdOn": t}
        yield _event("patchset-created", t, change, patch_set, uploader=owner)
        for account in accounts:
            if rng.random() >= ci_rate:
                continue
            if starts and rng.random() < starts:  # some CIs say when they start: a comment that gives no verdict
                t += rng.randint(10, 600)
                yield _event("comment-added", t, change, patch_set, author=_ci_author(account),
                             comment=f"Patch Set {ps}:\n\nStarting check jobs: https://ci.example.org/status/{number}")
            for k in range(2 if rng.random() < 0.2 else 1):  # a recheck now and then: another result, same patch set
                t += rng.randint(60, 4 * 3600)
                passes = True if k and flips and rng.random() < flips else None
                yield _ci(rng, registry, account, t, change, patch_set, passes)
        if rng.random() < 0.5:
            t += rng.randint(60, DAY)
            yield _event("comment-added", t, change, patch_set, author=_account(rng),
                         approvals=[{"type": "Code-Review", "description": "Code-Review", "value": "1"}],
                         comment=f"Patch Set {ps}: Code-Review+1\n\nlooks good")
    fate = rng.random()
    if fate < 0.6:
        t += rng.randint(600, 2 * DAY)
        change["status"] = "MERGED"
        yield _event("change-merged", t, change, patch_set, submitter=_account(rng),
                     newRev=f"{rng.getrandbits(160):040x}")
        if accounts and rng.random() < 0.1:  # a CI result after the merge, on the merged patch set
            t += rng.randint(60, 3600)
            yield _ci(rng, registry, rng.choice(accounts), t, change, patch_set)
    elif fate < 0.75:
        t += rng.randint(600, 20 * DAY)
        change["status"] = "ABANDONED"
        yield _event("change-abandoned", t, change, patch_set, abandoner=owner, reason="not needed")


def _ci(rng: random.Random, registry: Registry, account: str, t: int, change: dict[str, Any],
        patch_set: dict[str, Any], success: bool | None = None) -> dict[str, Any]:
    drivers = [d for d in registry.by_account[account] if d.review_project == change["project"]]
    comment, approvals = _ci_comment(rng, drivers, patch_set["number"], rng.randint(200, 1200), success)
    return _event("comment-added", t, change, patch_set, approvals=approvals, comment=comment,
                  author=_ci_author(account))


def _ci_author(account: str) -> dict[str, str]:
    return {"name": f"{account} CI", "email": f"{account}@ci.example.org", "username": account}


def _event(kind: str, t: int, change: dict[str, Any], patch_set: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**fields, "patchSet": dict(patch_set), "change": dict(change), "project": change["project"],
            "refName": f"refs/heads/{change['branch']}", "type": kind, "eventCreatedOn": t}


# ------------------------------------------------------------------------------------------------ the oracle


class Mark(NamedTuple):
    comment_time: int
    change_number: int
    patch_set: int
    sha256: str
    result: str


def _sha(comment: str) -> str:
    """The natural key's hash, from its definition (docs/schema.md): the ``Patch Set N:`` line dropped,
    lines stripped, blank ones dropped."""
    lines = comment.split("\n")
    if re.match(r"Patch Set \d+:", comment):
        lines = lines[1:]
    return hashlib.sha256("\n".join(x.strip() for x in lines if x.strip()).encode()).hexdigest()


def driverlog_marks(events: list[dict[str, Any]], registry: Registry) -> dict[tuple[str, str, str, str], Mark]:
    """(project_id, vendor, driver, release) -> DriverLog's mark over the whole history: the newest result among
    the driver's results with that release on a change that merged, at the patch set that merged (ties: the higher
    change, patch set, comment hash)."""
    merged = {int(e["change"]["number"]): int(e["patchSet"]["number"]) for e in events if e["type"] == "change-merged"}
    releases = sorted(registry.releases, key=lambda r: r.start_epoch)
    out: dict[tuple[str, str, str, str], Mark] = {}
    for ev in events:
        number, ps = int(ev["change"]["number"]), int(ev["patchSet"]["number"])
        if ev["type"] != "comment-added" or merged.get(number) != ps:
            continue
        for d, result, _, release in judge_event(ev, registry, releases):
            if not release:
                continue
            mark = Mark(int(ev["eventCreatedOn"]), number, ps, _sha(ev["comment"]), result)
            key = (*d.key, release)
            if key not in out or mark[:4] > out[key][:4]:
                out[key] = mark
    return out


def poll_cost(registry: Registry) -> int:
    """The queries of one DriverLog poll: a query per CI binding and branch (each active release's stable branch,
    and master)."""
    active = sum(1 for r in registry.releases if r.active)
    return registry.ci_bindings * (active + 1)
