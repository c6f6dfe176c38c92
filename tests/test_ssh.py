"""The Gerrit test server and the SSH layer, over real SSH on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paramiko
import pytest

from driverlog_daemon import ssh
from driverlog_daemon.backfill import command, fetch, query_text
from driverlog_daemon.ssh import fingerprint
from driverlog_daemon.testing.gerrit import GerritTestServer

from .conftest import comment_event, other_event
from .gerrit import SSHEnv, make_env, new_key


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


def test_unknown_command_fails_like_gerrit(ssh_env: SSHEnv) -> None:
    client = ssh.connect(ssh_env.config())
    try:
        out = ssh.run(client, "gerrit frobnicate", 5)
        assert out.status == 1 and "gerrit frobnicate: not found" in out.stderr
    finally:
        client.close()


def test_strict_refuses_unknown_host(tmp_path: Path) -> None:
    env = make_env(tmp_path, trust=False)
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
    env = make_env(tmp_path)
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
    env = make_env(tmp_path, trust=False)
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


def _seed(server: GerritTestServer, now: int) -> None:
    for i in range(7):
        account = "acme-storage-ci" if i % 2 == 0 else "initech-ci"
        server.record_only(comment_event(author=account, number=5000 + i, created_on=now - 100 + i,
                                         project="openstack/cinder"))
    server.record_only(comment_event(author="jdev", number=6000, created_on=now, project="openstack/nova"))
    server.record_only(other_event("patchset-created", now))


def _query(client: paramiko.SSHClient, text: str, start: int = 0) -> tuple[list[dict[str, object]], dict[str, object]]:
    out = ssh.run(client, command(text, start), 5)
    assert out.status == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    return rows[:-1], rows[-1]


def test_query_operators_and_paging(ssh_env: SSHEnv) -> None:
    now = int(time.time())
    _seed(ssh_env.server, now)
    client = ssh.connect(ssh_env.config())
    try:
        rows, stats = _query(client, "commentby:acme-storage-ci")
        assert [r["number"] for r in rows] == [5006, 5004, 5002, 5000]  # most recently updated first
        assert stats == {"type": "stats", "rowCount": 4, "runTimeMilliseconds": stats["runTimeMilliseconds"],
                         "moreChanges": False}
        assert "comments" in rows[0] and "currentPatchSet" in rows[0]
        rows, _ = _query(client, "(commentby:acme-storage-ci OR commentby:initech-ci) project:openstack/cinder")
        assert len(rows) == 7
        rows, _ = _query(client, "project:openstack/nova OR reviewer:initech-ci")
        assert {r["number"] for r in rows} == {1, 6000, 5001, 5003, 5005}
        after = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now - 96))
        rows, _ = _query(client, f'commentby:acme-storage-ci after:"{after} +0000"')
        assert [r["number"] for r in rows] == [5006, 5004]
        rows, stats = _query(client, "commentby:acme-storage-ci limit:3", start=0)
        assert len(rows) == 3 and stats["moreChanges"] is True
        rows, stats = _query(client, "commentby:acme-storage-ci limit:3", start=3)
        assert [r["number"] for r in rows] == [5000] and stats["moreChanges"] is False
        rows, stats = _query(client, "frobnicate:yes")
        assert rows == [] and stats["type"] == "error"
        out = ssh.run(client, "gerrit query --format JSON -S 0 commentby:initech-ci", 5)
        assert out.status == 0 and out.stdout.count(b"\n") == 4
    finally:
        client.close()


def test_backfill_fetch_pages_over_several_pages(ssh_env: SSHEnv) -> None:
    now = int(time.time())
    _seed(ssh_env.server, now)
    client = ssh.connect(ssh_env.config())
    try:
        def execute(cmd: str) -> bytes:
            out = ssh.run(client, cmd, 5)
            assert out.status == 0
            return out.stdout

        report = fetch(execute, ["acme-storage-ci", "initech-ci", "unused-ci"], now - 3600, accounts_per_query=2,
                       page_size=2)
        assert report.queries == 2 and report.pages >= 4
        assert sorted(c.change.number for c in report.comments) == list(range(5000, 5007))
        c = next(c for c in report.comments if c.change.number == 5000)
        assert (c.patch_set, c.author.username, c.change.project) == (3, "acme-storage-ci", "openstack/cinder")
        assert c.created_on == now - 100 + 1  # the message's own timestamp (a second after the event)
        assert all(x.comment.startswith("Patch Set 3:") for x in report.comments)
    finally:
        client.close()


def test_query_text_quotes_time_for_gerrit() -> None:
    assert query_text(["a", "b"], 0, 50) == '(commentby:a OR commentby:b) after:"1970-01-01 00:00:00 +0000" limit:50'
    assert command("x", 4).endswith("--start 4 'x'")
