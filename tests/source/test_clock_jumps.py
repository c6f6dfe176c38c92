"""The cursor against clock jumps: a stamp far ahead proves nothing, a step back widens the next gap, and a
daemon whose own clock is wrong says so and still reads what Gerrit has.

Each case posts events over the stream, then loses the connection while results are posted (only ``gerrit
query`` can tell of them): with the cursor fooled, the backfill starts past them and they are lost. No overlap:
the backfill reads from exactly where the cursor says (an overlap would hide a cursor a little too far ahead).
"""

from __future__ import annotations

import time
from pathlib import Path

from driverlog_daemon.config import HistoryConfig
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import ci_event, other_event
from driverlog_daemon.testing.gerrit.setup import SSHEnv
from driverlog_daemon.testing.harness import Harness

HOUR = 3600
DAY = 86400


def outage_after(h: Harness, stamps: list[int], while_away: list[int]) -> None:
    """Events stamped ``stamps`` over the stream (unrelated ones), then the connection lost while the results
    ``while_away`` (change numbers) are posted, stamped as Gerrit's clock (ours) says then; waits
    until the stream is back and its backfill done."""
    server = h.env.server
    for i, t in enumerate(stamps):  # one block each (the clock learns per block)
        lines = h.service.pipeline.stats.lines
        server.push_event(other_event(created_on=t) | {"n": i})
        assert wait_until(lambda lines=lines: h.service.pipeline.stats.lines > lines)
    h.flush()
    reconnects = h.closed_gaps("reconnect")
    server.refuse_connections(0.3)
    server.drop_connections()
    for number in while_away:
        server.record_only(ci_event(number, int(time.time())))  # after the drop: later than any event read
    assert wait_until(lambda: h.closed_gaps("reconnect") > reconnects and h.settled() and h.open_gaps() == 0,
                      timeout=20)


def cursor(h: Harness) -> int:
    return int(query(h.db, "SELECT last_event_time FROM stream_state")[0][0])


def test_one_event_stamped_an_hour_ahead_proves_nothing(ssh_env: SSHEnv, tmp_path: Path) -> None:
    now = int(time.time())
    with Harness(ssh_env, tmp_path, backfill_overlap_minutes=0) as h:
        assert wait_until(h.settled)
        outage_after(h, [now - 5] * 6 + [now + HOUR], [7101, 7102])
        assert cursor(h) < now + 300
        assert {7101, 7102} <= set(h.numbers())


def test_a_stamp_thirty_days_ahead_proves_nothing_on_the_first_events_either(ssh_env: SSHEnv,
                                                                             tmp_path: Path) -> None:
    now = int(time.time())
    with Harness(ssh_env, tmp_path, backfill_overlap_minutes=0) as h:
        assert wait_until(h.settled)
        outage_after(h, [now + 30 * DAY], [7201])  # the very first event: no neighbours yet
        # stamped after 7201, so this outage's backfill cannot find it: only the first one's can
        stamped = int(time.time())
        assert wait_until(lambda: int(time.time()) > stamped, interval=0.05)
        outage_after(h, [int(time.time())] * 6, [7202])
        assert {7201, 7202} <= set(h.numbers())
        assert cursor(h) < now + 300


def test_a_step_back_of_gerrits_clock_widens_the_next_gap(ssh_env: SSHEnv, tmp_path: Path) -> None:
    now = int(time.time())
    with Harness(ssh_env, tmp_path, backfill_overlap_minutes=0) as h:
        assert wait_until(h.settled)
        # Gerrit's clock was an hour fast, and is set right: the events after the step are older than the cursor
        outage_after(h, [now + HOUR] * 8 + [now] * 2, [7301, 7302])
        assert {7301, 7302} <= set(h.numbers())


def test_a_daemon_clock_a_week_ahead_still_reads_the_recent_past_and_says_so(ssh_env: SSHEnv,
                                                                            tmp_path: Path) -> None:
    now = int(time.time())
    for number, age in ((7401, 2 * HOUR), (7402, 20 * HOUR)):
        ssh_env.server.record_only(ci_event(number, now - age))
    # no history import (it reads 90 days, which would hide it): only the first start's backfill reads them
    h = Harness(ssh_env, tmp_path, clock=lambda: time.time() + 7 * DAY, history=HistoryConfig(enabled=False))
    with h:
        assert wait_until(lambda: h.connected() and ssh_env.server.stream_count >= 1)
        for i in range(6):  # one block each: the stream's clock is known after five
            ssh_env.server.push_event(other_event(created_on=now) | {"n": i})
            assert wait_until(lambda i=i: h.service.pipeline.stats.lines > i)
        assert wait_until(lambda: h.settled() and {7401, 7402} <= set(h.numbers()), timeout=20)
        assert wait_until(lambda: h.metric("driverlog_gerrit_clock_offset_seconds") < -6 * DAY)


def test_a_restart_does_not_trust_a_stored_cursor_far_ahead(ssh_env: SSHEnv, tmp_path: Path,
                                                            registry: Registry) -> None:
    # a file an earlier version wrote, after it trusted a stamp 30 days ahead; results came while it was down
    with Store(tmp_path / "d.sqlite") as store:
        store.sync_drivers(registry)
        store.commit(Batch("stream", cursor=(f"{ssh_env.server.host}:{ssh_env.server.port}",
                                             int(time.time()) + 30 * DAY)))
    stored = int(time.time())
    assert wait_until(lambda: int(time.time()) > stored, interval=0.05)
    ssh_env.server.record_only(ci_event(7501, int(time.time())))
    # no history import (the registry is new to the file, so it would read 90 days): only the start backfill
    with Harness(ssh_env, tmp_path, backfill_overlap_minutes=0, history=HistoryConfig(enabled=False)) as h:
        assert wait_until(lambda: h.settled() and 7501 in h.numbers())
