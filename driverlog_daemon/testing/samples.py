"""Realistic sample `gerrit stream-events` traffic, generated from a registry (used by ``demo`` and the bench).

Patch sets, review comments from people, merges, reviewer additions, ref updates and replication events, and
results from the registry's CI accounts written the way CIs write them (Zuul's ``- job url : SUCCESS in 1h 2m``,
``Build succeeded.``, ``PASSED``), each line matching the driver's own pattern.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

from driverlog_daemon.registry.load import Driver, Registry

PEOPLE = [(f"dev{i}", f"Developer {i}", f"dev{i}@example.org") for i in range(400)]
WORDS = (
    "the", "fix", "volume", "driver", "retry", "timeout", "race", "condition", "in", "attach", "path", "we",
    "should", "also", "handle", "the", "case", "where", "nova", "calls", "detach", "twice", "please", "add", "a",
    "unit", "test", "for", "this", "and", "a", "release", "note", "nit", "typo", "otherwise", "looks", "good", "to",
    "me", "thanks", "for", "working", "on", "this",
)


def _account(rng: random.Random) -> dict[str, str]:
    u, n, e = rng.choice(PEOPLE)
    return {"name": n, "email": e, "username": u}


def _text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    while length < size:
        w = rng.choice(WORDS)
        out.append(w)
        length += len(w) + 1
        if rng.random() < 0.08:
            out.append("\n\n")
    return " ".join(out)


def _from_pattern(pattern: str, rng: random.Random, build: str) -> str:
    """Turn a CI's pattern into a line it would match: `X \\S+ : SUCCESS` -> `- X <url> : SUCCESS in 1h 2m`."""
    text = pattern.replace("\\S+", f"https://ci.example.org/logs/{build}/").replace(".*", "")
    text = text.replace("\\s+", " ").replace("\\s*", " ").strip("^$")
    text = re.sub(r"\((\w+)\|[^)]*\)", r"\1", text)  # (FAILURE|POST_FAILURE) -> FAILURE
    text = text.replace("\\", "")
    return f"- {text} in {rng.randint(0, 3)}h {rng.randint(1, 59)}m {rng.randint(1, 59)}s"


def _ci_comment(rng: random.Random, drivers: list[Driver], ps: int, size: int,
                success: bool | None = None) -> tuple[str, list[dict[str, str]]]:
    success = rng.random() < 0.8 if success is None else success
    vote = "Verified+1" if success else "Verified-1"
    header = "Build succeeded (third-party-check pipeline)." if success else "Build failed (check pipeline)."
    lines = []
    for d in drivers:
        assert d.ci is not None
        pattern = d.ci.success_pattern if success else d.ci.failure_pattern
        if pattern is None:
            continue  # judged by its Verified vote: the comment's first line carries it
        line = _from_pattern(pattern, rng, f"{rng.randint(10, 99)}/{rng.randint(10**5, 10**6)}")
        lines.append(line if re.search(pattern, line) else f"- {pattern}")
    while sum(len(x) for x in lines) < size:
        job = f"tempest-extra-{rng.randint(1, 99)}"
        lines.append(f"- {job} https://ci.example.org/logs/{rng.randint(10**5, 10**6)}/ : "
                     f"{'SUCCESS' if success else rng.choice(['SUCCESS', 'FAILURE'])} in {rng.randint(5, 90)}m")
    style = rng.random()
    if style < 0.15:
        body = "PASSED" if success else "FAILED"
        body += "\n\n" + "\n".join(lines)
    else:
        body = header + "\n\n" + "\n".join(lines)
    comment = f"Patch Set {ps}: {vote}\n\n{body}"
    approvals = [{"type": "Verified", "description": "Verified", "value": "1" if success else "-1", "oldValue": "0"}]
    return comment, approvals


def sample_events(registry: Registry, events: int, *, seed: int = 1, start: int = 1_735_689_600,
                  ci_share: float = 0.05) -> Iterator[dict[str, Any]]:
    """``events`` stream events in time order from ``start`` (epoch seconds); about ``ci_share`` are CI results."""
    rng = random.Random(seed)
    accounts = sorted(registry.by_account)
    projects = sorted({d.review_project for ds in registry.by_account.values() for d in ds})
    t = start
    change_base = 900_000
    voted: list[tuple[int, int, str, str]] = []  # (change, patch set, project, branch) a CI voted on, not merged
    home: dict[int, tuple[str, str]] = {}  # change number -> (project, branch): fixed for good, as in Gerrit
    for _ in range(events):
        t += rng.choice((0, 0, 1, 1, 2, 5))
        r = rng.random()
        ci = r < ci_share and bool(accounts)
        account = rng.choice(accounts) if ci else ""
        wanted = registry.by_account[account][0].review_project if ci else None
        number = change_base + rng.randint(0, 40_000)
        for _ in range(100):  # a CI result needs a change of its driver's project
            if wanted is None or home.get(number, (wanted,))[0] == wanted:
                break
            number = change_base + rng.randint(0, 40_000)
        if number not in home:
            project = wanted or (rng.choice(projects) if rng.random() < 0.6
                                 else f"openstack/project-{rng.randint(1, 200)}")
            branch = "master" if rng.random() < 0.85 else rng.choice(["stable/2024.2", "stable/rocky", "stable/zed"])
            home[number] = (project, branch)
        project, branch = home[number]
        ps = rng.randint(1, 12)
        owner = _account(rng)
        change = {
            "project": project, "branch": branch, "id": f"I{rng.getrandbits(160):040x}", "number": number,
            "subject": _text(rng, 50)[:70].replace("\n", " "), "owner": owner,
            "url": f"https://review.example.org/c/{project}/+/{number}",
            "commitMessage": _text(rng, 300), "createdOn": t - 86400, "status": "NEW",
        }
        patch_set = {
            "number": ps, "revision": f"{rng.getrandbits(160):040x}", "parents": [f"{rng.getrandbits(160):040x}"],
            "ref": f"refs/changes/{number % 100:02d}/{number}/{ps}", "uploader": owner, "createdOn": t - 3600,
            "author": owner, "kind": "REWORK", "sizeInsertions": rng.randint(1, 500), "sizeDeletions": -3,
        }
        ev: dict[str, object]
        if ci:  # a registered CI account reports
            drivers = list(registry.by_account[account])
            d0 = drivers[0]
            chosen = [d for d in drivers if d.review_project == d0.review_project]
            chosen = rng.sample(chosen, k=rng.randint(1, len(chosen)))
            comment, approvals = _ci_comment(rng, chosen, ps, rng.randint(200, 3000))
            voted.append((number, ps, d0.review_project, branch))
            del voted[:-200]
            ev = {"author": {"name": f"{account} CI", "email": f"{account}@ci.example.org", "username": account},
                  "approvals": approvals, "comment": comment}
            kind = "comment-added"
        elif r < 0.30:
            ev = {"author": _account(rng),
                  "approvals": [{"type": "Code-Review", "description": "Code-Review",
                                 "value": rng.choice(["-1", "0", "1", "2"])}],
                  "comment": f"Patch Set {ps}: Code-Review+1\n\n" + _text(rng, rng.randint(200, 3000))}
            kind = "comment-added"
        elif r < 0.50:
            ev, kind = {"uploader": owner}, "patchset-created"
        elif r < 0.58:
            if voted and rng.random() < 0.5:  # most CI-tested changes merge at the patch set the CI voted on
                number, ps, project, branch = voted.pop(rng.randrange(len(voted)))
                change.update(number=number, project=project, branch=branch,
                              url=f"https://review.example.org/c/{project}/+/{number}")
                patch_set.update(number=ps, ref=f"refs/changes/{number % 100:02d}/{number}/{ps}")
            change["status"] = "MERGED"
            ev, kind = {"submitter": _account(rng), "newRev": f"{rng.getrandbits(160):040x}"}, "change-merged"
        elif r < 0.70:
            ev, kind = {"reviewer": _account(rng), "adder": owner}, "reviewer-added"
        elif r < 0.88:
            ev = {"submitter": _account(rng), "refUpdate": {
                "oldRev": f"{rng.getrandbits(160):040x}", "newRev": f"{rng.getrandbits(160):040x}",
                "refName": f"refs/changes/{number % 100:02d}/{number}/meta", "project": project}}
            kind = "ref-updated"
        else:
            ev = {"project": project, "ref": f"refs/changes/{number % 100:02d}/{number}/{ps}",
                  "targetNode": "gerrit-replica-1.example.org", "status": "succeeded",
                  "refStatus": "OK"}
            kind = "ref-replicated"
        if kind not in ("ref-updated", "ref-replicated"):
            ev["patchSet"] = patch_set
            ev["change"] = change
            ev["project"] = change["project"]
            ev["refName"] = f"refs/heads/{branch}"
            ev["changeKey"] = {"id": change["id"]}
        ev["type"] = kind
        ev["eventCreatedOn"] = t
        yield ev
