"""Test and demo tools, shipped like ``structlog.testing``: the Gerrit SSH test server, the sample generator, the
fault scenarios (``faults.py``) and :func:`wait_for`.

Nothing in the daemon's pipeline imports this package.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


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
    return f"timed out waiting for {what}; see {log}"
