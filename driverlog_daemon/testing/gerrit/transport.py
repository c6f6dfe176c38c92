"""The SSH side of the Gerrit test server: who may log in, which channels open, and when an exec request's reply
has gone out (output sent before it would make the client see a closed channel)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)


class Interface(paramiko.ServerInterface):
    """Public-key logins of ``authorized_keys``, session channels, and exec requests run by ``run`` on a thread
    (``run(channel, command, replied)``: ``replied`` is set once the exec request's reply has gone out)."""

    def __init__(self, authorized_keys: list[paramiko.PKey],
                 run: Callable[[paramiko.Channel, str, threading.Event], None]) -> None:
        self.authorized_keys, self.run = authorized_keys, run
        self.username: str | None = None

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if any(key == k for k in self.authorized_keys):
            self.username = username
            return int(AUTH_SUCCESSFUL)
        return int(AUTH_FAILED)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return int(OPEN_SUCCEEDED if kind == "session" else OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        # The reply to the exec request is sent after this returns; output sent before it would make the
        # client see a closed channel. The transport tells us when the reply has gone out.
        transport = channel.get_transport()
        replied = threading.Event()
        if isinstance(transport, Transport):
            transport.exec_replied[channel.remote_chanid] = replied
        else:  # pragma: no cover
            replied.set()
        threading.Thread(target=self.run,
                         args=(channel, command.decode("utf-8", "replace"), replied),
                         daemon=True, name="gerrit-test-exec").start()
        return True


class Transport(paramiko.Transport):
    """Signals when the server's reply to an exec request has been sent."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.exec_replied: dict[int, threading.Event] = {}

    def _send_user_message(self, data: Any) -> None:
        super()._send_user_message(data)  # type: ignore[misc]
        raw = data.asbytes() if hasattr(data, "asbytes") else bytes(data)
        if raw[:1] in (_MSG_CHANNEL_SUCCESS, _MSG_CHANNEL_FAILURE) and len(raw) >= 5:
            event = self.exec_replied.pop(int.from_bytes(raw[1:5], "big"), None)
            if event is not None:
                event.set()


_MSG_CHANNEL_SUCCESS = bytes([99])
_MSG_CHANNEL_FAILURE = bytes([100])
