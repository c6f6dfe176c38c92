"""The one retry loop of every database write: a failing write is retried with a growing delay, never dropped."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

_T = TypeVar("_T")


class Retry(NamedTuple):
    """How a failing write is retried: the first failures wait ``quiet`` delays (the database busy a moment: another
    process's transaction), after which each failure is an error that is reported, then waited on with a delay
    doubling from ``first`` to ``cap``; a write is never dropped."""

    quiet: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0, 2.0)
    first: float = 0.1
    cap: float = 5.0

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure (1-based)."""
        if failures <= len(self.quiet):
            return self.quiet[failures - 1]
        return float(min(self.first * 2 ** (failures - len(self.quiet) - 1), self.cap))

    def quietly(self, failures: int, error: sqlite3.Error) -> bool:
        """Whether the ``failures``-th failure is still a moment's wait rather than an error to report."""
        return failures <= len(self.quiet) and isinstance(error, sqlite3.OperationalError)


DEFAULT_RETRY = Retry()


def retrying(write: Callable[[], _T], policy: Retry, *,
             failed: Callable[[sqlite3.Error, int, float], None] = lambda error, failures, delay: None,
             give_up_after: int | None = None) -> _T:
    """Run ``write`` until it succeeds; after each ``sqlite3.Error``, ``failed(error, failures, delay)`` and wait.
    With ``give_up_after``, the error after that many failures is raised instead."""
    failures = 0
    while True:
        try:
            return write()
        except sqlite3.Error as error:
            failures += 1
            if give_up_after is not None and failures > give_up_after:
                raise
            delay = policy.delay(failures)
            failed(error, failures, delay)
            time.sleep(delay)
