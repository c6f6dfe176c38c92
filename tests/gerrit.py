"""Test helpers for SSH: keys in temp dirs, the project's Gerrit test server, a config pointing at it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from driverlog_daemon.config import GerritConfig
from driverlog_daemon.ssh import host_label
from driverlog_daemon.testing.gerrit import GerritTestServer


def new_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate(bits=256)


@dataclass
class SSHEnv:
    server: GerritTestServer
    client_key_file: Path
    known_hosts: Path
    host_key: paramiko.PKey

    def config(self, **overrides: object) -> GerritConfig:
        cfg = GerritConfig(host=self.server.host, port=self.server.port, username="driverlog",
                           key_file=str(self.client_key_file), known_hosts=str(self.known_hosts),
                           keepalive_seconds=5, connect_timeout_seconds=5, stall_timeout_seconds=30)
        return cfg._replace(**overrides)  # type: ignore[arg-type]


def make_env(tmp: Path, *, trust: bool = True) -> SSHEnv:
    client_key = new_key()
    key_file = tmp / "id_ecdsa"
    client_key.write_private_key_file(str(key_file))
    host_key = new_key()
    server = GerritTestServer(host_key, [client_key]).start()
    known = tmp / "known_hosts"
    known.write_text(
        f"{host_label(server.host, server.port)} {host_key.get_name()} {host_key.get_base64()}\n" if trust else "")
    return SSHEnv(server, key_file, known, host_key)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (a poll with a deadline, not a sleep)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
