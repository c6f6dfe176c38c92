"""The notification protocol's sender, against a real datagram socket that is not read (a busy or stuck systemd)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from driverlog_daemon.daemon.systemd import Notifier


def test_a_receiver_that_does_not_read_never_holds_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier(str(path), send_timeout=0.05)
    sent: list[bool] = []
    # The main loop sends from the thread that also handles SIGTERM: a send that blocked would stop the daemon
    # from stopping. Linux queues net.unix.max_dgram_qlen (10 by default) datagrams, then the sender waits.
    sender = threading.Thread(target=lambda: sent.extend(notifier.send("WATCHDOG=1") for _ in range(40)),
                              daemon=True)
    sender.start()
    sender.join(20)
    try:
        assert not sender.is_alive(), "a send waited for a receiver that never reads"
        assert sent[0] is True and False in sent  # the first went; those past the receiver's queue were dropped
        assert receiver.recv(64) == b"WATCHDOG=1"
    finally:
        notifier.close()
        receiver.close()


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier("")
    assert not notifier.enabled and notifier.send("READY=1") is False
