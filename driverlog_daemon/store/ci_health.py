"""CI health, by its public definitions (docs/health.md), on plain data: each mark's history, pass rates,
coverage of merged changes, silence.

The store keeps the transitions with :func:`transitions`; the reads turn the database's counts into the numbers;
both follow the definitions here, which the property test holds against a direct implementation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

WINDOWS = (7, 30, 90)  # days: runs, passes and pass rate
COVERAGE_DAYS = 30
DAY = 86400


class Candidate(NamedTuple):
    """A verification that can make a mark (its change merged at its patch set, its release known)."""

    effective_time: int  # max(comment time, merge time): when it became eligible
    comment_time: int
    change_number: int
    patch_set: int
    comment_sha256: str
    result: str
    verification_id: int

    @property
    def rank(self) -> tuple[int, int, int, str]:
        """The mark is the eligible candidate with the highest rank: the newest comment, then (for equal times,
        whatever the arrival order) the higher change number, patch set, comment hash — as ``driver_marks``."""
        return self.comment_time, self.change_number, self.patch_set, self.comment_sha256


class Transition(NamedTuple):
    id: str
    driver_id: int
    release: str
    from_result: str | None  # None: the first mark
    to_result: str
    at: int  # the effective time of the candidate that changed it
    change_number: int
    patch_set: int
    comment_time: int
    verification_id: int
    #: why it happened: "verification" (a CI result made it), "merge" (a change merged at a patch set a CI had
    #: judged), "import" (the first start's import of history) or "registry" (a registry change)
    cause: str = "verification"


CAUSES = ("verification", "merge", "import", "registry")


def transition_id(driver_id: int, release: str, at: int, from_result: str | None, to: Candidate) -> str:
    """Stable: the same transition has the same id whatever order the data arrived in."""
    text = f"{driver_id}|{release}|{at}|{from_result or ''}|{to.result}|{to.change_number}|{to.patch_set}|" \
           f"{to.comment_sha256}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def transitions(driver_id: int, release: str, candidates: Sequence[Candidate],
                before: Candidate | None = None) -> list[Transition]:
    """The moments the mark's result changes (or the first mark appears), from ``candidates`` in order of effective
    time; ``before``: the mark just before the first of them (the best of the earlier candidates), if any."""
    best, result = before, (before.result if before is not None else None)
    out: list[Transition] = []
    i = 0
    while i < len(candidates):
        at = candidates[i].effective_time
        while i < len(candidates) and candidates[i].effective_time == at:  # all that became eligible at once
            if best is None or candidates[i].rank > best.rank:
                best = candidates[i]
            i += 1
        assert best is not None
        if best.result != result:
            out.append(Transition(transition_id(driver_id, release, at, result, best), driver_id, release, result,
                                  best.result, at, best.change_number, best.patch_set, best.comment_time,
                                  best.verification_id, "merge" if at > best.comment_time else "verification"))
            result = best.result
    return out


def transition_object(t: Transition, review_url: str | None) -> dict[str, Any]:
    """A transition as the public interfaces show it: ``/api/1.0/drivers/<id>/history``, webhook bodies, feeds."""
    return {"id": t.id, "release": t.release.lower(), "from": t.from_result, "to": t.to_result, "at": t.at,
            "change_number": t.change_number, "patch_set": t.patch_set, "comment_time": t.comment_time,
            "review_url": review_url, "cause": t.cause}


def transition_notice(t: Transition, key: tuple[str, str, str], review_url: str | None) -> dict[str, Any]:
    """A transition with its driver: what a webhook delivers (beside its ``type``) and a feed entry shows."""
    project_id, vendor, name = key
    return {"transition": transition_object(t, review_url),
            "driver": {"id": t.driver_id, "project_id": project_id, "vendor": vendor, "name": name}}


def ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 4)


def at_risk(last_success: int | None, horizon: int | None, now: float, silence_days: float) -> bool | None:
    """Cinder's rule: no success in the last ``silence_days``. None when the database is not proven complete that
    far back (``horizon``: the time since which every CI result is known to be in it; None: never proven)."""
    since = now - silence_days * DAY
    if horizon is None or horizon > since:
        return None
    return last_success is None or last_success < since
