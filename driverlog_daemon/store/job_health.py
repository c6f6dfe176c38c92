"""Job health, by its public definitions (docs/health.md#jobs), on plain data: per job of a driver's CI over a
window, its runs, passes, failures, pass rate, flaky patch sets, rechecks, durations and last failure; and the
driver's pass rate beside its pass rate without the flaky patch sets, which tells an unstable CI from a broken
driver. The reads give the runs (:mod:`reads_jobs`); the property test holds these against a direct
implementation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

PASS, SKIPPED = "SUCCESS", "SKIPPED"


class JobRun(NamedTuple):
    """One job line of one of the CI's comments on the driver's review project."""

    job: str
    change_number: int
    patch_set: int
    comment_time: int
    result: str  # Zuul's word: SUCCESS, FAILURE, POST_FAILURE, TIMED_OUT, …, SKIPPED
    duration_seconds: int | None
    log_url: str | None
    review_url: str | None = None


def nearest_rank(values: Sequence[int], percent: float) -> int | None:
    """The nearest-rank percentile: the smallest value with at least ``percent`` % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def link(url: str | None) -> str | None:
    """A log URL shown as a link: http and https only (never ``javascript:`` or ``data:``)."""
    return url if url is not None and url.lower().startswith(("https://", "http://")) else None


def flaky_pairs(runs: Iterable[JobRun]) -> set[tuple[str, int, int]]:
    """(job, change, patch set) on which the job reported both SUCCESS and a failure."""
    seen: dict[tuple[str, int, int], set[bool]] = defaultdict(set)
    for r in runs:
        if r.result != SKIPPED:
            seen[(r.job, r.change_number, r.patch_set)].add(r.result == PASS)
    return {pair for pair, outcomes in seen.items() if len(outcomes) == 2}


def _newest(r: JobRun) -> tuple[int, int, int, str, str]:
    """The order "newest" means: comment time, then change, patch set; two comments of one second are told apart
    by result and log URL, whatever order they were read in."""
    return r.comment_time, r.change_number, r.patch_set, r.result, r.log_url or ""


def summary(runs: Sequence[JobRun]) -> list[dict[str, Any]]:
    """Each job's numbers, worst first (lowest pass rate, then most flaky, then name; jobs with no run last)."""
    by_job: dict[str, list[JobRun]] = defaultdict(list)
    for r in runs:
        by_job[r.job].append(r)
    flaky = flaky_pairs(runs)
    out: list[dict[str, Any]] = []
    for job, mine in by_job.items():
        ran = [r for r in mine if r.result != SKIPPED]
        passes = sum(r.result == PASS for r in ran)
        per_pair: dict[tuple[int, int], int] = defaultdict(int)
        for r in ran:
            per_pair[(r.change_number, r.patch_set)] += 1
        durations = [r.duration_seconds for r in ran if r.duration_seconds is not None]
        failures = [r for r in ran if r.result != PASS]
        last = max(failures, key=_newest, default=None)
        out.append({
            "name": job, "runs": len(ran), "passes": passes, "failures": len(ran) - passes,
            "skipped": len(mine) - len(ran),
            "pass_rate": round(passes / len(ran), 4) if ran else None,
            "flaky": sum(1 for (j, _, _) in flaky if j == job),
            "rechecks": sum(n - 1 for n in per_pair.values()),
            "median_seconds": nearest_rank(durations, 50), "p90_seconds": nearest_rank(durations, 90),
            "last_failure": None if last is None else {
                "at": last.comment_time, "change_number": last.change_number, "patch_set": last.patch_set,
                "result": last.result, "log_url": link(last.log_url), "review_url": link(last.review_url)},
        })
    out.sort(key=lambda j: (j["pass_rate"] is None, j["pass_rate"] or 0.0, -j["flaky"], j["name"]))
    return out


def driver_rates(verdicts: Iterable[tuple[int, int, str]], runs: Iterable[JobRun]) -> dict[str, Any]:
    """The driver's pass rate over its verdicts (change, patch set, success|failure) and without the patch sets on
    which any job flaked; and how many patch sets that is."""
    flaky = {(c, ps) for _, c, ps in flaky_pairs(runs)}
    verdicts = list(verdicts)
    kept = [v for v in verdicts if (v[0], v[1]) not in flaky]

    def rate(vs: list[tuple[int, int, str]]) -> float | None:
        return round(sum(v[2] == "success" for v in vs) / len(vs), 4) if vs else None

    return {"pass_rate": rate(verdicts), "pass_rate_without_flaky": rate(kept), "flaky_patch_sets": len(flaky),
            "verdicts": len(verdicts), "verdicts_without_flaky": len(kept)}


def flake_share(runs: Sequence[JobRun]) -> tuple[int, float | None]:
    """(jobs that flaked, the share of failed runs that were on a flaky job's patch set: what rechecks explain);
    the share is None without a failed run."""
    flaky = flaky_pairs(runs)
    failed = [r for r in runs if r.result not in (PASS, SKIPPED)]
    explained = sum((r.job, r.change_number, r.patch_set) in flaky for r in failed)
    return len({job for job, _, _ in flaky}), (round(explained / len(failed), 4) if failed else None)
