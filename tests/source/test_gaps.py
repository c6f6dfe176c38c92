"""The cursor is a low-water mark in Gerrit's clock: gaps stay open until a backfill covering them succeeds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import reads
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import ci_event
from driverlog_daemon.testing.gerrit.setup import SSHEnv
from driverlog_daemon.testing.harness import Harness

SERVER = "gerrit:29418"


def test_live_events_never_move_the_cursor_across_an_open_gap(tmp_path: Path, registry: Registry) -> None:
    with Store(tmp_path / "d.sqlite") as s:
        s.sync_drivers(registry)
        s.commit(Batch("stream", [], cursor=(SERVER, 100)))
        assert s.cursor(SERVER) == 100
        gap = s.open_gap(SERVER, 100, "reconnect")
        for t in (150, 200, 250):  # the new connection delivers newer events
            s.commit(Batch("stream", [], cursor=(SERVER, t)))
        assert (s.cursor(SERVER), reads.newest_event_time(s.conn, SERVER)) == (100, 250)
        later = s.open_gap(SERVER, 250, "dropped-output")
        # a backfill that started before `later`
        result = s.commit(Batch("backfill", close_gaps=(SERVER, gap, 250)))
        assert [g[0] for g in result.closed_gaps] == [gap]
        assert s.cursor(SERVER) == 250 and [g.id for g in reads.open_gaps(s.conn, SERVER)] == [later]
        s.commit(Batch("stream", [], cursor=(SERVER, 300)))
        assert s.cursor(SERVER) == 250
        s.commit(Batch("backfill", [], close_gaps=(SERVER, later, 300)))
        assert s.cursor(SERVER) == 300 and reads.open_gaps(s.conn, SERVER) == []


def rows(db: Path) -> list[int]:
    return [r[0] for r in query(db, "SELECT change_number FROM verifications ORDER BY change_number")]


def state(db: Path) -> tuple[int | None, list[Any]]:
    (server, cursor), = query(db, "SELECT server, last_event_time FROM stream_state")
    return cursor, [reads.Gap(*g) for g in query(
        db, "SELECT id, since, reason, opened_at, attempts, last_error FROM gaps WHERE server = ? "
            "AND closed_at IS NULL ORDER BY since, id", server)]


def test_a_failed_backfill_keeps_its_window_and_is_retried(ssh_env: SSHEnv, tmp_path: Path) -> None:
    # No overlap: only the gap's own window can find what was lost (an overlap would hide a forgotten gap).
    h = Harness(ssh_env, tmp_path, backfill_overlap_minutes=0, backfill_retry_base=0.3)
    with h:
        assert wait_until(h.settled)
        t = int(time.time())
        ssh_env.server.push_event(ci_event(8001, t - 20))
        assert wait_until(lambda: h.numbers() == [8001])
        ssh_env.server.refuse_connections(0.5)
        ssh_env.server.drop_connections()
        ssh_env.server.record_only(ci_event(8002, t - 10))  # while disconnected: only backfill can find it
        ssh_env.server.fail_queries(1, "exit")  # the reconnect's backfill fails; the stream stays
        ssh_env.server.hold_queries(True, after=1, matching=".")  # and its retry hangs on the wire until released
        assert wait_until(lambda: h.metric("driverlog_backfill_failures_total") >= 1)
        assert wait_until(lambda: ssh_env.server.queries_waiting >= 1)  # the retry, asked and unanswered
        ssh_env.server.push_event(ci_event(8003, t))  # live again, newer than the hole
        assert wait_until(lambda: 8003 in h.numbers())
        cursor, gaps = state(h.db)
        assert 8002 not in h.numbers() and len(gaps) == 1
        assert cursor is not None and cursor <= gaps[0].since < t  # the live event did not carry the cursor across
        ssh_env.server.hold_queries(False)
        assert wait_until(lambda: h.numbers() == [8001, 8002, 8003], timeout=20)
        assert h.metric("driverlog_backfills_total", {"trigger": "retry"}) >= 1
        assert wait_until(lambda: state(h.db)[1] == [])
        assert state(h.db)[0] == t


def test_the_quiet_window_is_read_in_gerrits_clock(ssh_env: SSHEnv, tmp_path: Path) -> None:
    """Gerrit's clock three hours behind ours (more than the overlap): a silently dead stream is still found."""
    skew = -3 * 3600
    h = Harness(ssh_env, tmp_path, stall_timeout_seconds=0.4, probe_timeout=2)
    with h:
        assert wait_until(h.settled)
        t = int(time.time()) + skew
        ssh_env.server.push_event(ci_event(9001, t))
        assert wait_until(lambda: h.numbers() == [9001])
        # 9001 may have ended a quiet window (a `resumed` backfill): let it finish, so that only the next stall's
        # backfill can find 9002
        assert wait_until(lambda: h.service.backfiller.idle() and h.open_gaps() == 0)
        ssh_env.server.kill_streams_silently(True)
        ssh_env.server.push_event(ci_event(9002, t + 1))  # the stream is dead: only the index has it
        assert wait_until(lambda: h.metric("driverlog_gerrit_reconnects_total", {"reason": "dead-stream"}) >= 1)
        ssh_env.server.kill_streams_silently(False)
        assert wait_until(lambda: h.numbers() == [9001, 9002])




def test_the_ledger_records_what_each_backfill_asked_and_recovered(harness: Harness) -> None:
    """A reconnect's gap is closed by a backfill that recovered the two results only it could deliver; the ledger
    names that backfill with its commands, and the commands metric counts every one Gerrit saw."""
    server = harness.env.server
    harness.outage(7001, [7002, 7003])
    assert wait_until(lambda: harness.open_gaps() == 0 and harness.service.backfiller.idle())
    assert harness.numbers() == [7001, 7002, 7003]
    with harness.service.reader.snapshot() as conn:
        ledger = reads.ingestion(conn)
    newest, start = ledger["gaps"][0], ledger["gaps"][-1]
    assert (newest["reason"], start["reason"]) == ("reconnect", "start")
    assert newest["closed_at"] is not None and newest["open_seconds"] >= 0
    run = newest["backfill"]
    assert run is not None and run["trigger"] == "reconnect" and run["recovered"] == 2
    assert run["commands"] >= run["queries"] >= 1 and run["since"] <= newest["since"]
    totals = ledger["totals"]
    assert totals["gaps"] == 2 and totals["open_gaps"] == 0 and totals["recovered"] >= 2
    queries_seen = sum(1 for c in server.commands if c.startswith("gerrit query"))
    assert totals["imports"] == 1  # the first start's import: its queries are in the ledger too
    assert totals["commands"] + totals["import_commands"] == queries_seen
    assert harness.metric("driverlog_gerrit_commands_total", {"command": "query"}) == queries_seen
    assert harness.metric("driverlog_gerrit_commands_total", {"command": "stream"}) == 2
