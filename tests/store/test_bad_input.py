"""Bad input and storage faults: counted, logged, retried — never fatal, nothing dropped."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.events import DEEP_LINE, ci_event, comment_event, line, poison_events
from driverlog_daemon.testing.gerrit.setup import SSHEnv
from driverlog_daemon.testing.harness import Harness


def test_bad_lines_are_counted_by_reason_and_later_results_still_land(ssh_env: SSHEnv, tmp_path: Path) -> None:
    h = Harness(ssh_env, tmp_path, max_event_bytes=4 << 20)
    t = int(time.time())
    regex_bomb = "- acme-cinder-fc " + "x" * 200_000 + " : NOT_A_RESULT\n" + "acme-cinder-fc " * 20_000
    bad: list[tuple[bytes, str]] = [
        (b'{"type":"comment-added","author":{"username":"acme-storage-ci"},"comment":"tru\n', "invalid_json"),
        (b'{"type":"comment-added","comment":"\xff\xfe"}\n', "invalid_utf8"),
        (b"[1, 2, 3]\n", "not_object"),
        (line({**ci_event(10, t), "change": {**ci_event(10, t)["change"], "number": "ten"}}),
         "invalid_field:change.number"),
        (line({**ci_event(11, t), "patchSet": None}), "missing_field:patchSet.number"),
    ]
    null_author = line({**ci_event(12, t), "author": None})  # names no CI account: counted by type, not read
    with h:
        assert wait_until(h.settled)
        for i, (raw, _) in enumerate(bad):
            ssh_env.server.push_raw(raw)
            ssh_env.server.push_event(ci_event(100 + i, t))
        ssh_env.server.push_raw(null_author)
        ssh_env.server.push_raw(b'{"type":"x","junk":"' + b"a" * (20 << 20) + b'"}\n')  # a 20 MB line
        ssh_env.server.push_event(ci_event(200, t))
        ssh_env.server.push_raw(line({"type": "brand-new-event", "eventCreatedOn": t}))  # unknown type: counted
        big = ci_event(201, t)
        big["comment"] += "\n" + "- a-very-long-line " * 60_000  # a 1 MB comment, still a result
        ssh_env.server.push_event(big)
        started = time.monotonic()
        ssh_env.server.push_event(comment_event(comment=regex_bomb, number=202, created_on=t))  # no result
        ssh_env.server.push_event(ci_event(203, t, project="openstack/nova"))  # not the driver's project: none
        ssh_env.server.push_event(ci_event(204, t))
        assert wait_until(lambda: 204 in h.numbers(), timeout=30)
        print(f"regex-heavy comment and the rest processed in {time.monotonic() - started:.2f} s")
        assert h.numbers() == [100, 101, 102, 103, 104, 200, 201, 204]
        for _, reason in bad:
            assert h.metric("driverlog_malformed_lines_total", {"reason": reason}) == 1, reason
        assert h.metric("driverlog_oversized_lines_total") == 1
        assert h.metric("driverlog_events_total", {"type": "brand-new-event"}) == 1
        assert h.metric("driverlog_ci_comments_unmatched_total", {"ci_account": "acme-storage-ci"}) >= 1




def test_lines_no_database_can_hold_cost_only_themselves_live_and_after_a_restart(
        ssh_env: SSHEnv, tmp_path: Path) -> None:
    """Each of these once killed the writer thread for good; the same comments then came back through the start
    backfill after a restart, and killed it again."""
    t = int(time.time())
    poison = poison_events(500, t)
    good = []
    with Harness(ssh_env, tmp_path) as h:
        assert wait_until(h.settled)
        for i, (event, _) in enumerate(poison):
            ssh_env.server.push_event(event)
            ssh_env.server.push_event(ci_event(100 + i, t))
            good.append(100 + i)
        ssh_env.server.push_raw(DEEP_LINE)
        ssh_env.server.push_raw(line({"type": "ref-updated", "eventCreatedOn": 10 ** 20}))
        ssh_env.server.push_event(ci_event(199, t))
        good.append(199)
        assert wait_until(lambda: h.numbers() == good, timeout=30), h.numbers()
        reasons = Counter([reason for _, reason in poison] + ["too_deep", "out_of_range:eventCreatedOn"])
        for reason, n in reasons.items():
            assert h.metric("driverlog_malformed_lines_total", {"reason": reason}) == n, reason
        assert h.service.writer.alive and h.service.writer_ok()
    for i, (event, _) in enumerate(poison_events(600, t + 1)):  # while it is down: only a query finds them
        ssh_env.server.record_only(event)
        ssh_env.server.record_only(ci_event(200 + i, t + 1))
        good.append(200 + i)
    with Harness(ssh_env, tmp_path) as h:
        # Gerrit's query form of the comment with the impossible patch set is sound (its message says "Patch Set
        # 2:"), so the backfill records it: that is the one result the poisoned changes 500 and 600 yield.
        assert wait_until(lambda: set(good) <= set(h.numbers()) and h.settled(), timeout=30), h.numbers()
        assert set(h.numbers()) - set(good) <= {500, 600}
        ssh_env.server.push_event(ci_event(300, t + 2))
        assert wait_until(lambda: 300 in h.numbers())
        assert h.service.writer.alive and h.open_gaps() == 0
