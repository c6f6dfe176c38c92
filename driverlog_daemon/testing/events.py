"""Events as Gerrit writes them (``../shared/docs/gerrit-events.md``), and stream lines made of them."""

from __future__ import annotations

import json
import time
from typing import Any


def comment_event(
    author: str = "acme-storage-ci",
    comment: str = "Patch Set 3: Verified+1\n\nBuild succeeded.\n\n- acme-cinder-fc https://ci/1 : SUCCESS in 1h",
    *,
    project: str = "openstack/cinder",
    branch: str = "master",
    number: int | str = 873412,
    patch_set: int | str = 3,
    created_on: int = 1_750_000_000,
    status: str = "NEW",
    **extra: Any,
) -> dict[str, Any]:
    """A comment-added event as a current Gerrit writes it."""
    ev: dict[str, Any] = {
        "author": {"name": f"{author} (CI)", "email": f"{author}@ci.example.org", "username": author},
        "approvals": [{"type": "Verified", "description": "Verified", "value": "1", "oldValue": "0"}],
        "comment": comment,
        "patchSet": {"number": patch_set, "revision": "5d1c" * 10, "ref": f"refs/changes/12/{number}/{patch_set}",
                     "uploader": {"name": "Jane Dev", "username": "jdev"}, "createdOn": created_on - 600},
        "change": {"project": project, "branch": branch, "id": "I" + "8f3c" * 10, "number": number,
                   "subject": "Add multiattach", "owner": {"name": "Jane Dev", "username": "jdev"},
                   "url": f"https://review.example.org/c/{project}/+/{number}", "status": status},
        "project": project,
        "refName": f"refs/heads/{branch}",
        "type": "comment-added",
        "eventCreatedOn": created_on,
    }
    ev.update(extra)
    return ev


def ci_event(number: int, t: int | None = None, result: str = "SUCCESS", **kw: Any) -> dict[str, Any]:
    """A result of the shipped registry's Acme FC driver on patch set 2 of change ``number`` (now by default)."""
    text = f"Patch Set 2: Verified+1\n\nBuild done.\n\n- acme-cinder-fc https://ci/{number} : {result} in 1h"
    return comment_event(comment=text, number=number, patch_set=2, created_on=t or int(time.time()), **kw)


def line(ev: dict[str, Any]) -> bytes:
    """One stream line, compact as Gerrit writes it."""
    return json.dumps(ev, separators=(",", ":")).encode() + b"\n"


def ci_line(number: int) -> bytes:
    """A stream line with one Acme FC success on patch set 1 of change ``number``, at a fixed time + ``number``."""
    text = f"Patch Set 1:\n\n- acme-cinder-fc https://ci/{number} : SUCCESS in 1h"
    return line(comment_event(comment=text, number=number, patch_set=1, created_on=1_750_000_000 + number))


def other_event(kind: str = "patchset-created", created_on: int = 1_750_000_000) -> dict[str, Any]:
    return {"uploader": {"name": "Jane Dev", "username": "jdev"},
            "change": {"project": "openstack/nova", "branch": "master", "number": 1, "status": "NEW"},
            "patchSet": {"number": 1}, "type": kind, "eventCreatedOn": created_on}


PROJECT = "openstack/cinder"
T = 1_780_000_000


def state_event(kind: str, number: int, ps: int, project: str = PROJECT, t: int = T) -> dict[str, Any]:
    status = {"change-merged": "MERGED", "change-abandoned": "ABANDONED"}.get(kind, "NEW")
    return {"submitter": {"name": "Core", "username": "core"}, "patchSet": {"number": ps, "revision": "ab" * 20},
            "change": {"project": project, "branch": "stable/2024.1", "id": "I" + "1" * 40, "number": number,
                       "url": f"https://review.example.org/c/{project}/+/{number}", "status": status},
            "project": project, "refName": "refs/heads/stable/2024.1", "type": kind, "eventCreatedOn": t}


def poison_events(number: int, t: int) -> list[tuple[dict[str, Any], str]]:
    """Registered CI comments (the shipped registry's Acme FC) no database can hold as they are, each with the
    malformed reason it is counted under: a lone surrogate (JSON's ``\\ud800``, which UTF-8 cannot encode) in the
    comment or the branch, an integer past SQLite's 63 bits as change number, patch set or event time, an event
    time past the year 9999 (no date format we write holds it)."""
    e = ci_event(number, t)
    return [
        ({**e, "comment": e["comment"] + "\ud800"}, "invalid_unicode:comment"),
        ({**e, "change": {**e["change"], "branch": "master\udfff"}}, "invalid_unicode:change.branch"),
        ({**e, "change": {**e["change"], "number": 1 << 63}}, "out_of_range:change.number"),
        ({**e, "patchSet": {**e["patchSet"], "number": 1 << 64}}, "out_of_range:patchSet.number"),
        ({**e, "eventCreatedOn": 1 << 63}, "out_of_range:eventCreatedOn"),
        ({**e, "eventCreatedOn": 300_000_000_000}, "out_of_range:eventCreatedOn"),  # the year 11476
    ]


#: A 2.4 KB line nested 1,200 deep: a recursive decoder's RecursionError.
DEEP_LINE = b'{"type":"comment-added","x":' + b"[" * 1200 + b"]" * 1200 + b"}\n"
