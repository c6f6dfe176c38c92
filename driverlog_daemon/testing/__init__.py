"""Test and demo tools, shipped like ``structlog.testing``: the Gerrit SSH test server (``gerrit``), events as Gerrit
writes them (``events``), generators of streams and histories (``samples``, ``history``), the fault scenarios
(``faults``), the in-process service (``harness``), the web side's data (``site``), a database file read from
outside (``db``), loopback networking (``net``, ``http``, ``receiver``), headless Chromium (``browser``) — and
polling with a deadline, here.

Nothing in the daemon's pipeline imports this package.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests, benches and the demo run from one
DATA = ROOT / "data" / "default_data.json"  # the shipped registry
UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"  # DriverLog's, beside the checkout if at all


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (a poll with a deadline, not a sleep)."""
    return wait_for(predicate, timeout, "", None, None, interval) is None


def wait_for(predicate: Callable[[], object], timeout: float, what: str, daemon: subprocess.Popen[bytes] | None,
             log: object, interval: float = 0.05) -> str | None:
    """Poll ``predicate`` until it is true (None) or why not: the daemon exited, or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return None
        if daemon is not None and daemon.poll() is not None:
            return f"the daemon exited ({daemon.returncode}) waiting for {what}; see {log}"
        time.sleep(interval)
    return None if predicate() else f"timed out waiting for {what}; see {log}"
