"""Gerrit's clock from the stream's stamps, on plain data: which stamps may prove ground."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from driverlog_daemon.parse.clock import SLACK_SECONDS, GerritClock, last_stamp
from driverlog_daemon.testing.events import line, other_event


class Clocks:
    """A monotonic and a wall clock that tests move by hand."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self.mono, self.wall = 1000.0, wall

    def step(self, seconds: float) -> float:
        self.mono += seconds
        self.wall += seconds
        return self.mono


def test_the_last_stamped_line_of_a_block_not_the_newest() -> None:
    block = line(other_event(created_on=200)) + line(other_event(created_on=100)) + b'{"type":"dropped-output"}\n'
    assert last_stamp(block) == 100
    assert last_stamp(b'{"comment":"\\"eventCreatedOn\\":99"}\n') is None  # inside a string: escaped quotes
    assert last_stamp(b'{"eventCreatedOn":' + b"9" * 25 + b"}") is None  # past 63 bits: no stamp


@given(st.integers(-10 * 86400, 10 * 86400), st.integers(0, 30), st.integers(3600, 60 * 86400))
def test_one_stamp_far_ahead_never_moves_the_position_past_gerrits_time(skew: int, seen: int, ahead: int) -> None:
    c = Clocks()
    clock = GerritClock(monotonic=lambda: c.mono, wall=lambda: c.wall)
    for _ in range(seen):  # Gerrit's clock `skew` from ours, one block a second
        read_at = c.step(1)
        assert clock.observe(int(c.wall) + skew, read_at) <= int(c.wall) + skew + SLACK_SECONDS
    read_at = c.step(1)
    gerrit_now = int(c.wall) + skew
    assert clock.observe(gerrit_now + ahead, read_at) <= max(gerrit_now, int(c.wall)) + SLACK_SECONDS


def test_a_lasting_step_is_followed_and_the_offset_measured() -> None:
    c = Clocks()
    clock = GerritClock(monotonic=lambda: c.mono, wall=lambda: c.wall)
    assert clock.offset() is None and clock.now() is None
    for _ in range(10):
        read_at = c.step(1)
        clock.observe(int(c.wall) + 7200, read_at)  # Gerrit two hours ahead
    assert clock.offset() == 7200 and clock.now() == c.wall + 7200
    positions = []
    for _ in range(40):  # its clock steps again
        read_at = c.step(1)
        positions.append(clock.observe(int(c.wall) + 3 * 7200, read_at) - int(c.wall))
    assert positions[0] == 7200 and positions[-1] == 3 * 7200  # Gerrit's time as it was, then followed
    assert clock.offset() == 3 * 7200
    c.wall += 7 * 86400  # our wall clock jumps: the offset to it changes, Gerrit's time does not
    assert clock.offset() == 3 * 7200 - 7 * 86400 and clock.now() == c.wall + clock.offset()


def test_a_step_back_is_followed_at_once() -> None:
    c = Clocks()
    clock = GerritClock(monotonic=lambda: c.mono, wall=lambda: c.wall)
    for _ in range(10):
        read_at = c.step(1)
        clock.observe(int(c.wall), read_at)
    read_at = c.step(1)
    assert clock.observe(int(c.wall) - 3600, read_at) == int(c.wall) - 3600
