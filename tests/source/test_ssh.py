"""The Gerrit test server and the SSH layer, over real SSH on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from driverlog_daemon.source import ssh
from driverlog_daemon.source.ssh import fingerprint
from driverlog_daemon.testing.gerrit import GerritTestServer
from driverlog_daemon.testing.gerrit.setup import SSHEnv, new_key, start_in


def test_key_auth_and_version(ssh_env: SSHEnv) -> None:
    client = ssh.connect(ssh_env.config())
    try:
        out = ssh.run(client, "gerrit version", 5)
        assert out.status == 0 and out.stdout.startswith(b"gerrit version ")
    finally:
        client.close()


def test_unknown_client_key_is_refused(ssh_env: SSHEnv, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    new_key().write_private_key_file(str(other))
    with pytest.raises(paramiko.AuthenticationException):
        ssh.connect(ssh_env.config(key_file=str(other)))


def test_strict_refuses_unknown_host(tmp_path: Path) -> None:
    env = start_in(tmp_path, trust=False)
    try:
        with pytest.raises(ssh.HostKeyError) as info:
            ssh.connect(env.config())
        message = str(info.value)
        assert f"[127.0.0.1]:{env.server.port}" in message
        assert fingerprint(env.host_key) in message
        assert str(env.known_hosts) in message
        assert env.known_hosts.read_text() == ""  # nothing recorded
    finally:
        env.server.stop()


def test_strict_refuses_changed_host_key(tmp_path: Path) -> None:
    env = start_in(tmp_path)
    try:
        impostor = new_key()
        env.known_hosts.write_text(f"[127.0.0.1]:{env.server.port} {impostor.get_name()} {impostor.get_base64()}\n")
        for policy in ("strict", "accept-new"):
            with pytest.raises(ssh.HostKeyError) as info:
                ssh.connect(env.config(host_key_policy=policy))
            message = str(info.value)
            assert "CHANGED" in message and fingerprint(env.host_key) in message and str(env.known_hosts) in message
    finally:
        env.server.stop()


def test_accept_new_records_then_pins(tmp_path: Path) -> None:
    env = start_in(tmp_path, trust=False)
    port = env.server.port
    cfg = env.config(host_key_policy="accept-new")
    ssh.connect(cfg).close()
    recorded = env.known_hosts.read_text()
    assert recorded.startswith(f"[127.0.0.1]:{port} ecdsa-sha2-nistp256 {env.host_key.get_base64()}")
    ssh.connect(cfg).close()  # the recorded key is accepted
    assert env.known_hosts.read_text() == recorded
    env.server.stop()
    # another server on the same address with another key: refused, file unchanged
    other = GerritTestServer(new_key(), env.server.authorized_keys, port=port).start()
    try:
        with pytest.raises(ssh.HostKeyError, match="CHANGED"):
            ssh.connect(cfg)
        assert env.known_hosts.read_text() == recorded
    finally:
        other.stop()


