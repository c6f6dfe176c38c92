"""The fault suite: the real daemon, the Gerrit SSH test server, faults following each other; nothing lost or doubled.

Expected verifications come from a reference implementation of the rules (``testing.faults.reference``), not from
the daemon's matcher. Gerrit's clock is skewed from ours by more than the overlap, in both directions: two runs,
each with its own server, daemon and database, side by side (they mostly wait).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.faults import FaultRun, Outcome, Scenario
from driverlog_daemon.testing.site import mixed_registry

SKEWS = {"gerrit-behind": -2 * 3600, "gerrit-ahead": 2 * 3600}


def run(work: Path, skew: int, registry: Path) -> Outcome:
    scenario = Scenario.suite(skew)
    kinds = [k for _, k in scenario.faults]
    assert kinds.count("drop") + kinds.count("drop-mid-line") >= 10 and kinds.count("stall") == 2
    assert {"outage", "dead-stream", "kill", "kill-during-backfill", "backfill-drop", "dropped-output",
            "dropped-output-backfill-fails"} <= set(kinds)
    assert {k for _, k in scenario.jumps} == {"ahead", "month", "back"}
    fault_run = FaultRun(work, scenario, registry, say=lambda _: None)
    try:
        return fault_run.run()
    finally:
        fault_run.close()


@pytest.mark.timeout(170)
def test_nothing_lost_nothing_doubled_when_faults_overlap(tmp_path: Path) -> None:
    # one run with a mixed registry: its 2014 drivers are judged by their CI's Verified vote
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(mixed_registry()))
    registries = {"gerrit-behind": DATA, "gerrit-ahead": mixed}
    with ThreadPoolExecutor(len(SKEWS)) as pool:
        futures = {name: pool.submit(run, tmp_path / name, skew, registries[name]) for name, skew in SKEWS.items()}
        outcomes = {name: f.result() for name, f in futures.items()}
    for name, outcome in outcomes.items():
        assert outcome.expected >= 250, f"{name}: {outcome.line()}"  # several hundred CI results
        assert outcome.transitions >= 10 and outcome.deliveries > outcome.transitions, outcome.line()
        assert len(outcome.faults) == len(Scenario.suite(SKEWS[name]).faults), f"{name}: {outcome.line()}"
    assert any("kill mid-delivery" in o.faults for o in outcomes.values()), "no kill -9 while a webhook was held"
    vote_judged = query(tmp_path / "gerrit-ahead" / "driverlog.sqlite",
                        "SELECT count(*) FROM verifications v JOIN drivers d ON d.id = v.driver_id "
                        "WHERE d.ci_account = 'ceph-ci' AND v.evidence LIKE 'Verified%'")
    assert vote_judged[0][0] >= 10, "the mixed registry's 2014 drivers were hardly tested"
    failed = {name: f"{o.line()}; missing e.g. {o.missing_examples}; log {o.log}"
              for name, o in outcomes.items() if not o.ok}
    assert not failed, failed
