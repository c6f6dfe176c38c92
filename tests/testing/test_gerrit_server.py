"""The Gerrit SSH test server itself: Gerrit's command errors, and its query language and paging."""

from __future__ import annotations

import json
import time

import paramiko

from driverlog_daemon.source import ssh
from driverlog_daemon.source.query import command
from driverlog_daemon.testing.gerrit.setup import SSHEnv, seed_changes


def test_unknown_command_fails_like_gerrit(ssh_env: SSHEnv) -> None:
    client = ssh.connect(ssh_env.config())
    try:
        out = ssh.run(client, "gerrit frobnicate", 5)
        assert out.status == 1 and "gerrit frobnicate: not found" in out.stderr
    finally:
        client.close()


def _query(client: paramiko.SSHClient, text: str, start: int = 0) -> tuple[list[dict[str, object]], dict[str, object]]:
    out = ssh.run(client, command(text, start), 5)
    assert out.status == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    return rows[:-1], rows[-1]


def test_query_operators_and_paging(ssh_env: SSHEnv) -> None:
    now = int(time.time())
    seed_changes(ssh_env.server, now)
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
