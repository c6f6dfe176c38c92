"""systemd's notification protocol without systemd (one datagram to ``$NOTIFY_SOCKET`` per message), and the
``STATUS=`` line that ``systemctl status`` shows."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from driverlog_daemon.parse.bounds import utc_text
from driverlog_daemon.store.reads import Gap

#: At most this long per message (seconds).
SEND_TIMEOUT = 0.5


class Notifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``; does nothing outside systemd."""

    def __init__(self, address: str | None = None, *, send_timeout: float = SEND_TIMEOUT) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # A receiver whose queue is full (10 datagrams by default) must not stop the main loop, which also
            # handles SIGTERM: a message that cannot go within this is dropped (the next tick sends it again).
            self._sock.settimeout(send_timeout)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8"), self.address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of systemd's ``WatchdogSec=`` (from ``$WATCHDOG_USEC``), when it applies to this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2_000_000)
    except ValueError:
        return None


def _utc(ts: int) -> str:
    return utc_text(ts, "%Y-%m-%d %H:%M:%S UTC")


def gap_text(gaps: Sequence[Gap]) -> str | None:
    """The oldest open gap in words (``since 2026-11-25 10:42:00 UTC (reconnect, 2 failed attempts)``)."""
    if not gaps:
        return None
    oldest = gaps[0]
    return f"since {_utc(oldest.since)} ({oldest.reason}" + (
        f", {oldest.attempts} failed attempts" if oldest.attempts else "") + (
        f", {len(gaps)} open" if len(gaps) > 1 else "") + ")"


def status_line(server: str, state: str | None, last_error: str | None, events: int, recorded: int,
                last_verification_time: int | None, gaps: Sequence[Gap]) -> str:
    """The daemon's STATUS= line: the connection (``state`` None: no Gerrit configured), counts, the newest
    verification and an open gap."""
    if state is None:
        conn = "no Gerrit configured"
    elif state == "connected":
        conn = f"connected to {server}"
    else:
        conn = f"{state} ({server})" + (f", last error: {last_error[:80]}" if last_error else "")
    last = "none yet" if last_verification_time is None else _utc(last_verification_time)
    gap = gap_text(gaps)
    return (f"{conn}; {events:,} events, {recorded:,} verifications recorded; last verification {last}"
            + (f"; backfill gap open {gap}" if gap else ""))
