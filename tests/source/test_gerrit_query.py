"""Backfill's gerrit query: texts, paging, rows moved while paging read again, the query budget."""

from __future__ import annotations

import time

import pytest

from driverlog_daemon.source import ssh
from driverlog_daemon.source.query import BackfillError, QueryBudget, command, fetch, query_text
from driverlog_daemon.testing.events import ci_event
from driverlog_daemon.testing.gerrit.setup import SSHEnv, seed_changes


def test_backfill_fetch_pages_over_several_pages(ssh_env: SSHEnv) -> None:
    now = int(time.time())
    seed_changes(ssh_env.server, now)
    client = ssh.connect(ssh_env.config())
    try:
        def execute(cmd: str) -> bytes:
            out = ssh.run(client, cmd, 5)
            assert out.status == 0
            return out.stdout

        report = fetch(execute, ["acme-storage-ci", "initech-ci", "unused-ci"], now - 3600, accounts_per_query=2,
                       page_size=2)
        assert report.queries == 2 and report.pages >= 4
        assert sorted(c.change.number for c in report.comments) == list(range(5000, 5007))
        c = next(c for c in report.comments if c.change.number == 5000)
        assert (c.patch_set, c.author.username, c.change.project) == (3, "acme-storage-ci", "openstack/cinder")
        assert c.created_on == now - 100 + 1  # the message's own timestamp (a second after the event)
        assert all(x.comment.startswith("Patch Set 3:") for x in report.comments)
    finally:
        client.close()


def test_query_text_quotes_time_for_gerrit() -> None:
    assert query_text(["a", "b"], 0, 50) == '(commentby:a OR commentby:b) after:"1970-01-01 00:00:00 +0000" limit:50'
    assert command("x", 4).endswith("--start 4 'x'")


def test_backfill_reads_again_the_rows_updated_while_it_pages(ssh_env: SSHEnv) -> None:
    """Gerrit pages by offset over rows newest-updated first: a change updated between two pages jumps to the
    front, past the pages read. Its older CI result must still be found."""
    from driverlog_daemon.source import query, ssh

    server = ssh_env.server
    t0 = 1_780_000_000
    for i in range(450):  # change 20000 is the least recently updated: the last page
        server.record_only(ci_event(20000 + i, t0 + i))
    client = ssh.connect(ssh_env.config())
    calls: list[str] = []

    def execute(command: str) -> bytes:
        out = ssh.run(client, command, 10)
        calls.append(command)
        if len(calls) == 1:  # between the first and second page, change 20000 gets a new patch set
            server.record_only({"type": "patchset-created", "eventCreatedOn": t0 + 1000, "patchSet": {"number": 3},
                                "change": {"project": "openstack/cinder", "branch": "master", "number": 20000,
                                           "status": "NEW"}, "uploader": {"username": "jdev"}})
        return out.stdout

    try:
        report = query.fetch(execute, ["acme-storage-ci"], t0 - 10, page_size=200)
    finally:
        client.close()
    assert {c.change.number for c in report.comments} == set(range(20000, 20450))


def test_steady_traffic_costs_the_pages_to_read_plus_one_re_read(ssh_env: SSHEnv) -> None:
    """While the backfill pages, every query moves three changes to the front (updates from a busy server, each
    newer than the last). It must find every CI result all the same, and cost the pages it has to read, one
    more for the rows pushed down, and one re-read of the rows that moved — not a re-read per update."""
    server = ssh_env.server
    t0 = 1_780_000_000
    n, page = 100, 20
    for i in range(n):
        server.record_only(ci_event(30000 + i, t0 + i))
    client = ssh.connect(ssh_env.config())
    moved = iter(range(10_000))

    def execute(cmd: str) -> bytes:
        out = ssh.run(client, cmd, 10)
        for _ in range(3):  # a person's comment on a change spread over the list: it jumps to the front
            k = next(moved)
            server.record_only({"type": "comment-added", "eventCreatedOn": t0 + 1000 + k, "comment": "recheck",
                                "author": {"username": "jdev"}, "patchSet": {"number": 2},
                                "change": {"project": "openstack/cinder", "branch": "master",
                                           "number": 30000 + (k * 37) % n, "status": "NEW"}})
        return out.stdout

    try:
        report = fetch(execute, ["acme-storage-ci"], t0 - 10, page_size=page)
    finally:
        client.close()
    assert {c.change.number for c in report.comments} == set(range(30000, 30000 + n))  # nothing missed
    assert report.queries == 1 and report.repasses == 1
    assert report.pages <= -(-n // page) + 1 + 1, report.pages


def test_the_query_budget_delays_a_query_never_drops_it() -> None:
    now = [1000.0]
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    budget = QueryBudget(3, clock=lambda: now[0], wait=wait)
    assert [budget.take() for _ in range(3)] == [0.0, 0.0, 0.0]  # within the budget: at once
    now[0] += 10
    assert budget.take() == 50.0 and waits == [50.0]  # the fourth waits for the first to be a minute old
    assert budget.waited == 50.0
    assert QueryBudget(0, clock=lambda: now[0], wait=wait).take() == 0.0  # 0: no ceiling
    assert budget.take() == budget.take() == 0.0  # the budget is full again
    budget.stop()  # the daemon stops: a query waiting for its turn gives up instead (its gap stays open)
    with pytest.raises(BackfillError, match="stopping"):
        budget.take()


def test_the_history_import_leaves_a_quarter_of_the_budget_to_the_gap_backfills() -> None:
    """At 8 a minute, the import's queries (share 0.75) stop at 6; a gap backfill's go on to 8 at once, and the
    import's next one waits until it is under its share again — the minute counts everyone's queries."""
    now = [1000.0]

    def wait(seconds: float) -> None:
        now[0] += seconds

    budget = QueryBudget(8, clock=lambda: now[0], wait=wait)
    assert [budget.take(0.75) for _ in range(6)] == [0.0] * 6
    now[0] += 1
    assert [budget.take() for _ in range(2)] == [0.0, 0.0]  # the gaps' quarter, at once
    assert budget.take(0.75) == 59.0  # 8 in the minute: it waits until only 5 are (the first three a minute old)
    assert now[0] == 1060.0
