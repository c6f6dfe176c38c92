"""Job lines in Zuul's form and their variants, read from a CI comment: one result per job name (its first line),
only Zuul's result words, durations in seconds, the cap per comment; a property test against building the lines."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from driverlog_daemon.match.jobs import MAX_PER_COMMENT, RESULTS, JobResult, read_jobs

COMMENT = """Patch Set 3: Verified-1

Build failed (check pipeline).

- cinder-tempest-dsvm-ceph https://ci.example.org/logs/12/345/ : FAILURE in 43m 12s
- cinder-tempest-plugin-lvm https://ci.example.org/logs/12/346/ : SUCCESS in 1h 02m 03s (non-voting)
- cinder-grenade : SKIPPED
- cinder-tempest-dsvm-ceph https://ci.example.org/logs/12/347/ : SUCCESS in 1m
  - cinder-unit https://ci.example.org/logs/u/ : POST_FAILURE in 12m 03s
- see the docs : HERE
- cinder-pep8 https://ci.example.org/logs/p/ : TIMED_OUT in 2h
"""


def test_the_variants_and_the_first_line_per_job() -> None:
    jobs, capped = read_jobs(COMMENT)
    assert not capped
    assert jobs == (
        JobResult("cinder-tempest-dsvm-ceph", "FAILURE", 43 * 60 + 12, "https://ci.example.org/logs/12/345/"),
        JobResult("cinder-tempest-plugin-lvm", "SUCCESS", 3723, "https://ci.example.org/logs/12/346/"),
        JobResult("cinder-grenade", "SKIPPED", None, None),
        JobResult("cinder-unit", "POST_FAILURE", 723, "https://ci.example.org/logs/u/"),
        JobResult("cinder-pep8", "TIMED_OUT", 7200, "https://ci.example.org/logs/p/"),
    )
    assert read_jobs("Patch Set 1: Verified+1\n\nBuild succeeded.") == ((), False)


def test_a_comment_with_thousands_of_lines_costs_a_bounded_amount() -> None:
    many = "\n".join(f"- job-{i} https://ci/{i} : SUCCESS in 1m" for i in range(5000))
    jobs, capped = read_jobs(many)
    assert capped and len(jobs) == MAX_PER_COMMENT
    assert read_jobs("\n".join(many.split("\n")[:MAX_PER_COMMENT])) == (jobs, False)


names = st.from_regex(r"[a-z][a-z0-9._-]{0,30}", fullmatch=True)
lines = st.lists(st.tuples(names, st.sampled_from(sorted(RESULTS)), st.one_of(st.none(), st.integers(0, 36000)),
                           st.one_of(st.none(), st.from_regex(r"https://ci\.example\.org/[a-z0-9/]{0,20}",
                                                              fullmatch=True))), max_size=30)


def _line(name: str, result: str, seconds: int | None, url: str | None) -> str:
    took = ""
    if seconds is not None:
        h, rest = divmod(seconds, 3600)
        m, s = divmod(rest, 60)
        took = f" in {h}h {m:02d}m {s:02d}s" if h else f" in {m}m {s:02d}s"
    return f"- {name}{' ' + url if url else ''} : {result}{took}"


@given(lines, st.sampled_from(["\n", "\n\n"]))
def test_the_lines_written_are_the_results_read(jobs: list[tuple[str, str, int | None, str | None]],
                                                 sep: str) -> None:
    comment = "Patch Set 2: Verified+1\n\nBuild succeeded.\n\n" + sep.join(_line(*j) for j in jobs)
    first: dict[str, JobResult] = {}
    for name, result, seconds, url in jobs:
        first.setdefault(name, JobResult(name, result, seconds, url or None))
    assert read_jobs(comment) == (tuple(first.values()), False)
