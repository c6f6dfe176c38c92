"""The stream client, backfill and writer together, in-process, over real SSH against the test server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from driverlog_daemon.source.stream import Backoff
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.events import ci_event, comment_event, line, other_event
from driverlog_daemon.testing.gerrit.setup import SSHEnv
from driverlog_daemon.testing.harness import Harness


def test_events_flow_into_the_database(harness: Harness) -> None:
    harness.env.server.push_event(ci_event(1001))
    harness.env.server.push_event(ci_event(1002, result="FAILURE"))
    harness.env.server.push_event(comment_event(author="jdev", comment="lgtm"))
    assert wait_until(lambda: len(harness.rows()) == 2)
    assert harness.rows() == [(1001, "success", "stream"), (1002, "failure", "stream")]
    assert harness.env.server.commands[0].startswith("gerrit stream-events -s comment-added -s patchset-created")
    assert harness.metric("driverlog_gerrit_connected") == 1
    assert wait_until(lambda: harness.metric("driverlog_events_total", {"type": "comment-added"}) == 3)


def test_split_across_packets_and_many_in_one(harness: Harness) -> None:
    data = line(ci_event(2001)) + line(other_event()) + line(ci_event(2002)) + line(ci_event(2003))
    cut1, cut2 = 37, len(data) - 5
    server = harness.env.server
    server.push_raw(data[:cut1])
    server.push_raw(data[cut1:cut2])
    server.push_raw(data[cut2:])
    assert wait_until(lambda: harness.numbers() == [2001, 2002, 2003])
    assert harness.metric("driverlog_malformed_lines_total", {"reason": "invalid_json"}) == 0


def test_oversized_line_is_skipped(ssh_env: SSHEnv, tmp_path: Path) -> None:
    h = Harness(ssh_env, tmp_path, max_event_bytes=4096)
    with h:
        assert wait_until(h.settled)
        big = line(ci_event(3001, comment_extra="x")).replace(b"Build done.", b"Build done. " + b"y" * 20_000)
        # in pieces, so the reader sees the partial line outgrow the limit before its newline arrives
        for i in range(0, len(big), 3000):
            ssh_env.server.push_raw(big[i:i + 3000])
        ssh_env.server.push_event(ci_event(3002))
        assert wait_until(lambda: h.numbers() == [3002])
        assert h.metric("driverlog_oversized_lines_total") == 1
        assert h.metric("driverlog_malformed_lines_total", {"reason": "invalid_json"}) == 0


def test_drop_reconnects_with_exponential_backoff(harness: Harness) -> None:
    server = harness.env.server
    for n in range(1, 4):
        server.drop_connections()
        assert wait_until(lambda n=n: server.connections == n + 1 and harness.settled())
    listener = harness.service.listener
    assert listener is not None
    # rng = 1.0 makes full jitter its upper bound: 0.01, 0.02, 0.04 (doubling, attempt kept while flapping)
    assert listener.delays[:3] == pytest.approx([0.01, 0.02, 0.04])
    assert harness.metric("driverlog_gerrit_reconnects_total", {"reason": "closed"}) + harness.metric(
        "driverlog_gerrit_reconnects_total", {"reason": "error"}) == 3
    assert harness.metric("driverlog_backfills_total", {"trigger": "reconnect"}) == 3


def test_refused_connections_are_retried_until_the_server_is_back(harness: Harness) -> None:
    server = harness.env.server
    server.refuse_connections(0.5)
    server.drop_connections()
    assert wait_until(lambda: harness.metric("driverlog_gerrit_connect_attempts_total") >= 3)
    assert wait_until(harness.settled)
    assert harness.backoff.cap == max(harness.service.listener.delays)  # type: ignore[union-attr]


def test_events_during_an_outage_are_recovered_once(harness: Harness) -> None:
    server = harness.env.server
    server.push_event(ci_event(4001))
    assert wait_until(lambda: harness.numbers() == [4001])
    server.refuse_connections(0.3)
    server.drop_connections()
    for n in (4002, 4003):
        server.record_only(ci_event(n))  # happens while we are away: only gerrit query can tell
    assert wait_until(lambda: harness.numbers() == [4001, 4002, 4003])
    server.push_event(ci_event(4003))  # the same comment arrives again over the stream: still one row
    server.push_event(ci_event(4004))
    assert wait_until(lambda: 4004 in harness.numbers())
    assert harness.rows() == [(4001, "success", "stream"), (4002, "success", "backfill"),
                              (4003, "success", "backfill"), (4004, "success", "stream")]


def test_dropped_output_triggers_a_backfill(harness: Harness) -> None:
    server = harness.env.server
    server.record_only(ci_event(5001))  # discarded by Gerrit's per-connection queue
    server.push_raw(b'{"type":"dropped-output"}\n')
    server.push_event(ci_event(5002))
    assert wait_until(lambda: harness.numbers() == [5001, 5002])
    assert harness.metric("driverlog_backfills_total", {"trigger": "dropped-output"}) == 1
    assert harness.metric("driverlog_gerrit_dropped_output_total") == 1


def test_what_dropped_output_lost_is_recovered_after_failing_backfills_while_the_stream_moves_on(
        ssh_env: SSHEnv, tmp_path: Path) -> None:
    # Only the gap that dropped-output opens remembers where the loss began: the stream's later events move the
    # cursor, so a backfill from the cursor (no overlap here, as none is wide enough for a long outage) misses it.
    h = Harness(ssh_env, tmp_path, backfill_overlap_minutes=0, backfill_retry_base=0.05)
    server = ssh_env.server
    t = int(time.time())
    with h:
        assert wait_until(h.settled)
        server.record_only(ci_event(5101, t))  # discarded by Gerrit's per-connection queue
        server.fail_queries(10_000)  # Gerrit answers no query for now
        server.push_raw(b'{"type":"dropped-output"}\n')
        server.push_event(ci_event(5102, t + 600))  # the stream goes on, ten minutes later
        assert wait_until(lambda: h.numbers() == [5102])
        assert wait_until(lambda: h.metric("driverlog_backfill_failures_total") >= 2)
        server.fail_queries(0)  # Gerrit answers again
        assert wait_until(lambda: h.numbers() == [5101, 5102] and h.open_gaps() == 0)
        assert h.closed_gaps("dropped-output") == 1


def test_stall_probe_fails_then_reconnect(ssh_env: SSHEnv, tmp_path: Path) -> None:
    h = Harness(ssh_env, tmp_path, stall_timeout_seconds=0.3, probe_timeout=0.3)
    with h:
        assert wait_until(h.settled)
        ssh_env.server.stall(True)
        assert wait_until(lambda: h.metric("driverlog_gerrit_reconnects_total", {"reason": "stall"}) >= 1)
        ssh_env.server.stall(False)
        # Not settled(): with a 0.3 s stall timeout a quiet stream is checked (a gap and its backfill) about twice
        # a second, so the moments with no backfill running are too short to sample reliably on a loaded machine.
        assert wait_until(lambda: h.connected() and ssh_env.server.connections >= 2)
        ssh_env.server.push_event(ci_event(6001))
        assert wait_until(lambda: h.numbers() == [6001])


def test_a_stall_check_whose_backfill_times_out_ends_with_it(ssh_env: SSHEnv, tmp_path: Path) -> None:
    # The probe answers but the quiet window's queries hang: the backfill fails on its command deadline (5 s here),
    # and that failure must end the check (a new connection decides), however long "stuck" is judged to take.
    h = Harness(ssh_env, tmp_path, stall_timeout_seconds=0.3, stall_check_seconds=300)
    with h:
        assert wait_until(h.settled)
        ssh_env.server.hold_queries(True)
        assert wait_until(lambda: h.metric("driverlog_backfill_failures_total") >= 1, timeout=15)
        assert wait_until(lambda: h.metric("driverlog_gerrit_reconnects_total", {"reason": "stall"}) >= 1,
                          timeout=3)
        ssh_env.server.hold_queries(False)
        ssh_env.server.push_event(ci_event(6101))
        assert wait_until(lambda: h.numbers() == [6101])


def test_quiet_but_alive_does_not_reconnect(ssh_env: SSHEnv, tmp_path: Path) -> None:
    h = Harness(ssh_env, tmp_path, stall_timeout_seconds=0.2)
    with h:
        assert wait_until(h.settled)
        ssh_env.server.push_event(ci_event(7001))
        assert wait_until(lambda: h.numbers() == [7001])
        assert wait_until(lambda: h.metric("driverlog_gerrit_stalls_total") >= 3)
        assert ssh_env.server.connections == 1
        assert h.metric("driverlog_backfills_total", {"trigger": "stall"}) >= 2
        assert sum(h.metric("driverlog_gerrit_reconnects_total", {"reason": r})
                   for r in ("stall", "dead-stream", "closed", "error")) == 0


def test_silently_dead_stream_is_detected_through_backfill(ssh_env: SSHEnv, tmp_path: Path) -> None:
    h = Harness(ssh_env, tmp_path, stall_timeout_seconds=0.3)
    with h:
        assert wait_until(h.settled)
        ssh_env.server.kill_streams_silently(True)
        ssh_env.server.push_event(ci_event(8001))  # recorded on the change, never delivered on the stream
        assert wait_until(lambda: h.metric("driverlog_gerrit_reconnects_total", {"reason": "dead-stream"}) == 1)
        assert h.rows() == [(8001, "success", "backfill")]
        ssh_env.server.kill_streams_silently(False)
        assert wait_until(lambda: h.settled() and ssh_env.server.connections == 2)
        ssh_env.server.push_event(ci_event(8002))
        assert wait_until(lambda: h.numbers() == [8001, 8002])


def test_a_result_dropped_after_the_quiet_window_check_is_backfilled_when_the_stream_resumes(
        ssh_env: SSHEnv, tmp_path: Path) -> None:
    """The stream goes silent, the stall's backfill finds nothing missed (so it looks alive), then the stream drops
    a result and resumes with a newer one: the resumed stream must not carry the cursor over the dropped result.
    No overlap, so that only a gap from before the resumed events can find it (the soak found this hole)."""
    h = Harness(ssh_env, tmp_path, stall_timeout_seconds=0.3, backfill_overlap_minutes=0)
    t0 = int(time.time()) - 600
    with h:
        assert wait_until(h.settled)
        ssh_env.server.push_event(ci_event(9001, t=t0))
        assert wait_until(lambda: h.numbers() == [9001] and h.service.backfiller.idle() and h.open_gaps() == 0)
        stalls = h.closed_gaps("stall")
        ssh_env.server.kill_streams_silently(True)
        # a stall's backfill has covered the quiet window and found nothing missed: the stream looks alive
        assert wait_until(lambda: h.closed_gaps("stall") > stalls)
        ssh_env.server.push_event(ci_event(9002, t=t0 + 10))  # dropped by the stream, recorded on the change
        ssh_env.server.kill_streams_silently(False)
        ssh_env.server.push_event(ci_event(9003, t=t0 + 20))  # delivered
        assert wait_until(lambda: h.numbers() == [9001, 9002, 9003])
        assert h.rows()[1] == (9002, "success", "backfill")


def test_stream_events_not_permitted_backs_off_to_the_slow_end(ssh_env: SSHEnv, tmp_path: Path) -> None:
    ssh_env.server.fail_stream_events(1)
    h = Harness(ssh_env, tmp_path)
    with h:
        assert wait_until(lambda: h.metric("driverlog_gerrit_reconnects_total", {"reason": "exit-status"}) >= 2)
        listener = h.service.listener
        assert listener is not None
        assert all(d >= h.backoff.cap / 2 for d in listener.delays)
        assert "not permitted" in listener.last_error


def test_initial_import_pages_through_history(ssh_env: SSHEnv, tmp_path: Path) -> None:
    now = int(time.time())
    for i in range(7):
        ssh_env.server.record_only(ci_event(9000 + i, t=now - 3600 + i))
    ssh_env.server.record_only(ci_event(8999, t=now - 200 * 3600))  # older than backfill_max_age_hours
    h = Harness(ssh_env, tmp_path, backfill_page_size=2)
    with h:
        assert wait_until(lambda: h.numbers() == list(range(9000, 9007)))
        assert wait_until(h.service.backfiller.idle)
        report = h.service.backfiller.last_report
        assert report is not None and report.pages >= 4
        assert {r[2] for r in h.rows()} == {"backfill"}


def test_backoff_full_jitter_cap_and_reset() -> None:
    values = iter([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.999])
    b = Backoff(rng=lambda: next(values))
    assert [b.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]  # half of 1, 2, 4 … capped at 60
    assert b.next_delay() == 0.0  # full jitter reaches down to zero
    b.connected_for(299)
    assert b.attempt == 9
    b.connected_for(300)
    assert b.attempt == 0 and b.next_delay() == pytest.approx(0.999)


def test_a_stall_check_behind_a_stuck_backfill_replaces_the_connection(ssh_env: SSHEnv, tmp_path: Path) -> None:
    """One backfill at a time: the reconnect's backfill hangs on the wire, the stream goes quiet, the probe answers;
    the stall check's backfill waits behind the stuck one only so long, then the connection is replaced — which
    frees the stuck query — and once Gerrit answers again every gap closes and the result is there."""
    h = Harness(ssh_env, tmp_path, stall_timeout_seconds=0.3, probe_timeout=1, stall_check_seconds=0.5)
    with h:
        assert wait_until(h.settled)
        ssh_env.server.hold_queries(True)
        ssh_env.server.drop_connections()  # the reconnect's backfill hangs; the new stream says nothing
        ssh_env.server.record_only(ci_event(9100))
        assert wait_until(lambda: h.metric("driverlog_gerrit_reconnects_total", {"reason": "stall"}) >= 1)
        assert h.open_gaps() >= 1  # nothing was proven meanwhile
        ssh_env.server.hold_queries(False)
        assert wait_until(lambda: h.open_gaps() == 0 and 9100 in h.numbers(), timeout=20)
