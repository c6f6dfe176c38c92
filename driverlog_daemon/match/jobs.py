"""The job level of a CI comment: its job lines, in Zuul's form (OpenDev's own results summary reads the same).

    - cinder-tempest-dsvm-ceph https://ci.example.org/logs/12/345/ : FAILURE in 43m 12s
    - cinder-tempest-plugin-lvm https://ci.example.org/logs/12/346/ : SUCCESS in 1h 02m 03s (non-voting)
    - cinder-grenade : SKIPPED

A job result is the job's name, the Zuul result word (only SUCCESS is a pass), the duration in seconds when given
and the log URL when given. One comment gives one result per job name, its first line; at most
:data:`MAX_PER_COMMENT` of them (a comment with more is said to be capped). A plain function on text: the job
results are read from the kept comments where they are shown (:mod:`store.reads_jobs`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Zuul's build results (zuul.model); only SUCCESS passes
RESULTS = frozenset({"SUCCESS", "FAILURE", "POST_FAILURE", "TIMED_OUT", "RETRY_LIMIT", "NODE_FAILURE", "SKIPPED",
                     "ABORTED", "ERROR", "CANCELED", "MERGE_CONFLICT", "MERGER_FAILURE", "CONFIG_ERROR",
                     "DISK_FULL", "LOST", "EXCEPTION"})
MAX_PER_COMMENT = 200
MAX_NAME, MAX_URL = 200, 2000  # longer is not a job line

_LINE = re.compile(r"^[ \t]*- (\S+)(?: (\S+))? : ([A-Z_]+)(?: in (?:(\d+)h ?)?(?:(\d+)m ?)?(?:(\d+)s)?)?(?=\s|$)",
                   re.MULTILINE)


class JobResult(NamedTuple):
    job: str
    result: str
    duration_seconds: int | None
    log_url: str | None


def read_jobs(comment: str) -> tuple[tuple[JobResult, ...], bool]:
    """The comment's job results, first line per job name, and whether it held more than the cap."""
    if "- " not in comment:
        return (), False
    found: dict[str, JobResult] = {}
    for name, url, result, h, m, s in _LINE.findall(comment):
        if result not in RESULTS or name in found or len(name) > MAX_NAME or len(url) > MAX_URL:
            continue
        if len(found) == MAX_PER_COMMENT:
            return tuple(found.values()), True
        duration = int(h or 0) * 3600 + int(m or 0) * 60 + int(s or 0) if h or m or s else None
        found[name] = JobResult(name, result, duration, url or None)
    return tuple(found.values()), False
