"""Job health's definitions (docs/health.md#jobs) on plain data, held against a direct implementation of each
in random histories: runs, passes, failures, pass rate, flaky patch sets, rechecks, nearest-rank median and p90,
the last failure (a log link only when http or https), and the driver's pass rate without the flaky patch sets."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from driverlog_daemon.store.job_health import JobRun, driver_rates, flake_share, link, nearest_rank, summary

RESULTS = ["SUCCESS", "SUCCESS", "FAILURE", "POST_FAILURE", "TIMED_OUT", "SKIPPED"]
runs_strategy = st.lists(st.builds(
    JobRun, st.sampled_from(["tempest", "grenade", "unit"]), st.integers(1, 6), st.integers(1, 3),
    st.integers(0, 10_000), st.sampled_from(RESULTS), st.one_of(st.none(), st.integers(1, 5000)),
    st.sampled_from([None, "https://ci/log", "javascript:alert(1)", "http://ci/x"])), max_size=60)


def _direct(runs: list[JobRun], job: str) -> dict[str, Any]:
    mine = [r for r in runs if r.job == job]
    ran = [r for r in mine if r.result != "SKIPPED"]
    pairs = {(r.change_number, r.patch_set) for r in ran}
    flaky = sum(1 for p in pairs if any(r.result == "SUCCESS" for r in ran if (r.change_number, r.patch_set) == p)
                and any(r.result != "SUCCESS" for r in ran if (r.change_number, r.patch_set) == p))
    rechecks = len(ran) - len(pairs)
    durations = [r.duration_seconds for r in ran if r.duration_seconds is not None]

    def pct(p: float) -> int | None:  # the smallest value with at least p% of the values at or below it
        return min((v for v in durations if sum(d <= v for d in durations) * 100 >= p * len(durations)),
                   default=None)

    failures = [r for r in ran if r.result != "SUCCESS"]
    newest = sorted(failures, key=lambda r: (r.comment_time, r.change_number, r.patch_set, r.result,
                                             r.log_url or ""))[-1] if failures else None
    return {"runs": len(ran), "passes": len(ran) - len(failures), "failures": len(failures), "flaky": flaky,
            "rechecks": rechecks, "median_seconds": pct(50), "p90_seconds": pct(90),
            "pass_rate": round((len(ran) - len(failures)) / len(ran), 4) if ran else None,
            "last_failure_at": newest.comment_time if newest else None,
            "last_failure_link": newest.log_url if newest and newest.log_url and newest.log_url.startswith("http")
            else None}


@given(runs_strategy)
def test_each_job_by_its_definitions(runs: list[JobRun]) -> None:
    got = {j["name"]: j for j in summary(runs)}
    assert set(got) == {r.job for r in runs}
    for job, j in got.items():
        want = _direct(runs, job)
        assert {k: j[k] for k in want if k in j} == {k: v for k, v in want.items() if k in j}
        f = j["last_failure"]
        assert (f["at"] if f else None) == want["last_failure_at"]
        assert (f["log_url"] if f else None) == want["last_failure_link"]
    rates = [j["pass_rate"] for j in summary(runs) if j["pass_rate"] is not None]
    assert rates == sorted(rates)  # worst first


@given(runs_strategy, st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3), st.sampled_from(["success", "failure"])),
                               max_size=20))
def test_the_pass_rate_without_flaky_patch_sets(runs: list[JobRun], verdicts: list[tuple[int, int, str]]) -> None:
    flaky = {(r.change_number, r.patch_set) for r in runs if r.result == "SUCCESS"
             and any(o.job == r.job and (o.change_number, o.patch_set) == (r.change_number, r.patch_set)
                     and o.result not in ("SUCCESS", "SKIPPED") for o in runs)}
    kept = [v for v in verdicts if (v[0], v[1]) not in flaky]
    got = driver_rates(verdicts, runs)
    assert got["flaky_patch_sets"] == len(flaky) and got["verdicts_without_flaky"] == len(kept)
    assert got["pass_rate_without_flaky"] == (round(sum(v[2] == "success" for v in kept) / len(kept), 4)
                                              if kept else None)


def test_nearest_rank_and_links() -> None:
    assert nearest_rank([], 50) is None
    assert nearest_rank([5, 1, 3, 2, 4], 50) == 3 and nearest_rank(list(range(1, 11)), 90) == 9
    assert link("javascript:alert(1)") is None and link("data:text/html,x") is None
    assert link("HTTPS://ci/x") == "HTTPS://ci/x"


@given(runs_strategy)
def test_the_flake_share(runs: list[JobRun]) -> None:
    def flaked(r: JobRun) -> bool:
        same = [o.result for o in runs if (o.job, o.change_number, o.patch_set) == (r.job, r.change_number,
                                                                                   r.patch_set)]
        return "SUCCESS" in same and any(x not in ("SUCCESS", "SKIPPED") for x in same)

    failed = [r for r in runs if r.result not in ("SUCCESS", "SKIPPED")]
    jobs, share = flake_share(runs)
    assert jobs == len({r.job for r in runs if flaked(r)})
    assert share == (round(sum(map(flaked, failed)) / len(failed), 4) if failed else None)
