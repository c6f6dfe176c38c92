"""Gerrit's clock as its stream shows it, and which event times are credible enough to prove ground.

The cursor is in Gerrit's clock, so one wrong stamp would move it: an event stamped an hour (or 30 days) ahead
would prove an hour nobody saw, and the next outage's backfill would start past what it lost. So the stream's
position after a block is the time of the block's *last* stamped event (after a step back of Gerrit's clock, the
events are older than the cursor, and the ground proven must follow them back), capped by where Gerrit's clock
should be when the block was read:

- with enough blocks seen, the median offset of their last stamps from our monotonic clock (one wrong stamp, or a
  few, cannot move a median; a lasting step of Gerrit's clock moves it within half the window);
- before that, the lower of the blocks seen and the daemon's own wall clock (neither alone is trusted yet).

A stamp within a slack of that estimate (delivery jitter) counts as it is; one past it counts only up to the
estimate.
Our monotonic clock, not the wall clock, measures the offset, so a step of the daemon's own clock moves nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

_KEY = b'"eventCreatedOn":'
#: blocks whose offsets the median reads, and how many it needs before it is trusted alone
WINDOW = 31
MIN_SAMPLES = 5
#: how far a block's last stamp may run ahead of the estimate and still count in full: delivery jitter, a few
#: seconds (what a wrong stamp within it could claim is of the order of Gerrit's one-second resolution)
SLACK_SECONDS = 5
#: Gerrit's clock and ours this far apart is worth a warning (the estimate is what counts either way)
SKEW_WARNING_SECONDS = 300


def _median(values: deque[float]) -> float:
    """The middle value (the upper of the two middle ones for an even count); ``statistics`` would import
    ``random``, which replay's start-up does without."""
    return sorted(values)[len(values) // 2]


def last_stamp(block: bytes) -> int | None:
    """The ``eventCreatedOn`` of the block's last stamped line (Gerrit writes it at the top level only; inside a
    string its quotes are escaped, so the key cannot be faked by a comment)."""
    at = block.rfind(_KEY)
    if at < 0:
        return None
    start = end = at + len(_KEY)
    while end < len(block) and end - start < 19 and 0x30 <= block[end] <= 0x39:
        end += 1
    return int(block[start:end]) if start < end < start + 19 else None


class GerritClock:
    """The offset of Gerrit's clock from ours, from the blocks the stream delivered; see the module's description."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._monotonic, self._wall = monotonic, wall
        self._offsets: deque[float] = deque(maxlen=WINDOW)  # last stamp minus monotonic read time, per block
        # their median once enough were seen, written by the one thread that observes: the others (the backfill
        # worker asks ``now``) read this float and never iterate a deque that thread appends to
        self._middle: float | None = None

    def observe(self, stamp: int, read_at: float) -> int:
        """A block's last stamp, read at ``read_at`` (monotonic): the position it proves. The stamp itself when
        it is within the slack of where Gerrit's clock should be, else that estimate (what the stream has shown
        up to now, stamped right)."""
        self._offsets.append(stamp - read_at)
        middle = _median(self._offsets)
        estimate = read_at + middle
        if len(self._offsets) < MIN_SAMPLES:
            estimate = min(estimate, self._wall() - (self._monotonic() - read_at))
        else:
            self._middle = middle
        return stamp if stamp <= estimate + SLACK_SECONDS else int(estimate)

    @property
    def known(self) -> bool:
        return self._middle is not None

    def offset(self) -> float | None:
        """Gerrit's clock minus the daemon's wall clock, in seconds (None until enough blocks were seen)."""
        middle = self._middle
        return None if middle is None else middle + self._monotonic() - self._wall()

    def now(self) -> float | None:
        """Gerrit's time now, by the offset (None until enough blocks were seen)."""
        middle = self._middle
        return None if middle is None else self._monotonic() + middle
