"""What the tests share: events as Gerrit writes them, reading a database file, polling with a deadline, the
Gerrit test server with fresh keys, and a running service against it. Fixtures are in ``conftest.py``; no test
module imports another."""

from __future__ import annotations

import http.client
import json
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from driverlog_daemon.config import Config, DatabaseConfig, GerritConfig, HistoryConfig, RegistryConfig, WebhookConfig
from driverlog_daemon.daemon.service import Service
from driverlog_daemon.model import ChangeFact, Verification
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.source.ssh import host_label
from driverlog_daemon.source.stream import Backoff
from driverlog_daemon.store import schema
from driverlog_daemon.store.store import Store
from driverlog_daemon.testing.gerrit import GerritTestServer
from driverlog_daemon.testing.http import ThreadedServer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "default_data.json"
UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"

# ------------------------------------------------------------------------------------------------ events


def comment_event(
    author: str = "acme-storage-ci",
    comment: str = "Patch Set 3: Verified+1\n\nBuild succeeded.\n\n- acme-cinder-fc https://ci/1 : SUCCESS in 1h",
    *,
    project: str = "openstack/cinder",
    branch: str = "master",
    number: int | str = 873412,
    patch_set: int | str = 3,
    created_on: int = 1_750_000_000,
    status: str = "NEW",
    **extra: Any,
) -> dict[str, Any]:
    """A comment-added event as a current Gerrit writes it."""
    ev: dict[str, Any] = {
        "author": {"name": f"{author} (CI)", "email": f"{author}@ci.example.org", "username": author},
        "approvals": [{"type": "Verified", "description": "Verified", "value": "1", "oldValue": "0"}],
        "comment": comment,
        "patchSet": {"number": patch_set, "revision": "5d1c" * 10, "ref": f"refs/changes/12/{number}/{patch_set}",
                     "uploader": {"name": "Jane Dev", "username": "jdev"}, "createdOn": created_on - 600},
        "change": {"project": project, "branch": branch, "id": "I" + "8f3c" * 10, "number": number,
                   "subject": "Add multiattach", "owner": {"name": "Jane Dev", "username": "jdev"},
                   "url": f"https://review.example.org/c/{project}/+/{number}", "status": status},
        "project": project,
        "refName": f"refs/heads/{branch}",
        "type": "comment-added",
        "eventCreatedOn": created_on,
    }
    ev.update(extra)
    return ev


def ci_event(number: int, t: int | None = None, result: str = "SUCCESS", **kw: Any) -> dict[str, Any]:
    """A result of the shipped registry's Acme FC driver on patch set 2 of change ``number`` (now by default)."""
    text = f"Patch Set 2: Verified+1\n\nBuild done.\n\n- acme-cinder-fc https://ci/{number} : {result} in 1h"
    return comment_event(comment=text, number=number, patch_set=2, created_on=t or int(time.time()), **kw)


def line(ev: dict[str, Any]) -> bytes:
    """One stream line, compact as Gerrit writes it."""
    return json.dumps(ev, separators=(",", ":")).encode() + b"\n"


def ci_line(number: int) -> bytes:
    """A stream line with one Acme FC success on patch set 1 of change ``number``, at a fixed time + ``number``."""
    text = f"Patch Set 1:\n\n- acme-cinder-fc https://ci/{number} : SUCCESS in 1h"
    return line(comment_event(comment=text, number=number, patch_set=1, created_on=1_750_000_000 + number))


def other_event(kind: str = "patchset-created", created_on: int = 1_750_000_000) -> dict[str, Any]:
    return {"uploader": {"name": "Jane Dev", "username": "jdev"},
            "change": {"project": "openstack/nova", "branch": "master", "number": 1, "status": "NEW"},
            "patchSet": {"number": 1}, "type": kind, "eventCreatedOn": created_on}


PROJECT = "openstack/cinder"
T = 1_780_000_000


def state_event(kind: str, number: int, ps: int, project: str = PROJECT, t: int = T) -> dict[str, Any]:
    status = {"change-merged": "MERGED", "change-abandoned": "ABANDONED"}.get(kind, "NEW")
    return {"submitter": {"name": "Core", "username": "core"}, "patchSet": {"number": ps, "revision": "ab" * 20},
            "change": {"project": project, "branch": "stable/2024.1", "id": "I" + "1" * 40, "number": number,
                       "url": f"https://review.example.org/c/{project}/+/{number}", "status": status},
            "project": project, "refName": "refs/heads/stable/2024.1", "type": kind, "eventCreatedOn": t}


def verification(registry: Registry, *, ps: int = 1, t: int = 1_750_000_000, result: str = "success",
                 release: str = "Gazpacho", sha: str = "a" * 64, driver: int = 0, number: int = 1000) -> Verification:
    d = [d for d in registry.drivers if d.ci][driver]
    assert d.ci is not None
    return Verification(
        driver_key=d.key, ci_account=d.ci.account, change_number=number, patch_set=ps, comment_sha256=sha,
        comment_time=t, result=result,  # type: ignore[arg-type]
        evidence=f"- job : {result.upper()}", project=d.review_project, branch="master", release=release,
        change_status="NEW", review_url=f"https://review.example.org/{number}", change_id="I" + "0" * 40,
    )


# ---------------------------------------------------------------------------------------------- database


def query(db: Path | str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a read-only connection of its own (as any other process would read the file)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def count(db: Path | str, table: str = "verifications") -> int:
    return int(query(db, f"SELECT count(*) FROM {table}")[0][0])


# ------------------------------------------------------------------------------------------------ HTTP


def released_file(path: Path, version: int) -> sqlite3.Connection:
    """A database file at schema ``version`` as that version was released (its migrations run by hand, no later
    one), open for the test to fill the way that version's daemon would have."""
    conn = sqlite3.connect(path, isolation_level=None)
    for step in schema.MIGRATIONS[:version]:
        for statement in schema.split_sql(step.sql):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def write_merged_history(conn: sqlite3.Connection, d: Any, rows: list[tuple[int, int, str, int]]) -> None:
    """Into a file of an older schema, with plain SQL: driver ``d`` as drivers.id 1 and, for each (change number,
    comment time, result, merge time), its verification on patch set 1 of the change, merged at that patch set."""
    conn.execute("INSERT INTO drivers (id, project_id, vendor, name, review_project, ci_account, first_seen_at, "
                 "updated_at) VALUES (1, ?, ?, ?, ?, ?, 0, 0)",
                 (d.project_id, d.vendor, d.name, d.review_project, d.ci.account))
    for number, t, result, merged_at in rows:
        conn.execute("""INSERT INTO verifications (driver_id, ci_account, change_number, patch_set, comment_sha256,
                        comment_time, result, evidence, project, branch, release, received_at, source)
                        VALUES (1, ?, ?, 1, ?, ?, ?, 'e', ?, 'master', 'Gazpacho', 0, 'stream')""",
                     (d.ci.account, number, str(number) * 64, t, result, d.review_project))
        conn.execute("""INSERT INTO changes (change_number, project, branch, status, status_time, current_patch_set,
                        merged_patch_set, merged_time, last_update_time)
                        VALUES (?, ?, 'master', 'MERGED', ?, 1, 1, ?, ?)""",
                     (number, d.review_project, merged_at, merged_at, merged_at))


def http_get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET",
             timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:``port``: (status, headers by lower-case name, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ polling


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (a poll with a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ------------------------------------------------------------------------------------- Gerrit test server


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
    """A Gerrit test server with fresh keys; its host key in ``tmp/known_hosts`` unless ``trust`` is false."""
    client_key = new_key()
    key_file = tmp / "id_ecdsa"
    client_key.write_private_key_file(str(key_file))
    host_key = new_key()
    server = GerritTestServer(host_key, [client_key]).start()
    known = tmp / "known_hosts"
    known.write_text(
        f"{host_label(server.host, server.port)} {host_key.get_name()} {host_key.get_base64()}\n" if trust else "")
    return SSHEnv(server, key_file, known, host_key)


def seed_changes(server: GerritTestServer, now: int) -> None:
    """Seven CI comments on openstack/cinder (changes 5000-5006), a person's on nova, a patchset-created."""
    for i in range(7):
        account = "acme-storage-ci" if i % 2 == 0 else "initech-ci"
        server.record_only(comment_event(author=account, number=5000 + i, created_on=now - 100 + i,
                                         project="openstack/cinder"))
    server.record_only(comment_event(author="jdev", number=6000, created_on=now, project="openstack/nova"))
    server.record_only(other_event("patchset-created", now))


class Harness:
    """The daemon's service in this process (no HTTP) against the test server, with quick backoff."""

    def __init__(self, env: SSHEnv, tmp: Path, *, registry: Path = DATA, history: HistoryConfig | None = None,
                 webhooks: tuple[WebhookConfig, ...] = (), probe_timeout: float | None = None,
                 stall_check_seconds: float | None = None, **gerrit: Any) -> None:
        self.env = env
        self.db = tmp / "d.sqlite"
        cfg = Config(gerrit=env.config(**gerrit), registry=RegistryConfig(str(registry)),
                     database=DatabaseConfig(str(self.db)), history=history or HistoryConfig(), webhooks=webhooks)
        self.backoff = Backoff(base=0.01, cap=0.08, rng=lambda: 1.0)
        self.service = Service(cfg, backoff=self.backoff, poll_interval=0.05, http=False, command_timeout=5,
                               probe_timeout=probe_timeout, stall_check_seconds=stall_check_seconds)

    def __enter__(self) -> Harness:
        self.service.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()

    def rows(self) -> list[tuple[Any, ...]]:
        return query(self.db, "SELECT change_number, result, source FROM verifications ORDER BY change_number")

    def numbers(self) -> list[int]:
        return [r[0] for r in self.rows()]

    def closed_gaps(self, reason: str) -> int:
        return int(query(self.db, "SELECT count(*) FROM gaps WHERE reason = ? AND closed_at IS NOT NULL",
                         reason)[0][0])

    def open_gaps(self) -> int:
        return int(query(self.db, "SELECT count(*) FROM gaps WHERE closed_at IS NULL")[0][0])

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.service.metrics.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)

    def connected(self) -> bool:
        return self.service.listener is not None and self.service.listener.state == "connected"

    def settled(self) -> bool:
        """Connected, subscribed, and the backfill that follows every connection is done, and the history import
        the first start plans."""
        return (self.connected() and self.env.server.stream_count >= 1 and self.service.backfiller.idle()
                and self.service.history().imports == 0)

    def outage(self, before: int, while_away: list[int]) -> None:
        """A result over the stream, then the connection lost for a moment while ``while_away`` are posted (only
        ``gerrit query`` can tell of them); returns once the backfill has recorded them."""
        server = self.env.server
        server.push_event(ci_event(before))
        assert wait_until(lambda: before in self.numbers())
        server.refuse_connections(0.3)
        server.drop_connections()
        for n in while_away:
            server.record_only(ci_event(n))
        assert wait_until(lambda: set(while_away) <= set(self.numbers()))


# ------------------------------------------------------------------------------------------- the web side

NOW = int(time.time())
XSS_SCRIPT = "- acme-cinder-fc <script>alert(1)</script> : SUCCESS"
XSS_ATTR = '- acme-cinder-iscsi "><img src=x onerror=alert(1)> : FAILURE'
EVIL_URL = "javascript:alert(1)"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def driver(registry: Registry, name: str) -> Any:
    return next(d for d in registry.drivers if d.name == name)


def vote(registry: Registry, name: str, number: int, ps: int, t: int, result: str, release: str,
         evidence: str | None = None, url: str | None = None, sha: str = "a") -> Verification:
    d = driver(registry, name)
    return Verification(driver_key=d.key, ci_account=d.ci.account, change_number=number, patch_set=ps,
                        comment_sha256=sha * 64, comment_time=t, result=result,  # type: ignore[arg-type]
                        evidence=evidence or f"- job https://ci/{number} : {result.upper()}",
                        project=d.review_project, branch="master", release=release, change_status="NEW",
                        review_url=url or f"https://review.example.org/c/{d.review_project}/+/{number}",
                        change_id=None)


def merged(number: int, ps: int, t: int, project: str = "openstack/cinder") -> ChangeFact:
    return ChangeFact(number, project, "master", "MERGED", t, ps, ps, t)


@dataclass
class Site:
    web: ThreadedServer
    db: Path
    store: Store
    registry: Registry
    health: dict[str, Any]

    def get(self, path: str, method: str = "GET", headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        return http_get(self.web.port, path, headers, method)

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, body)
        return json.loads(body)

    def driver_id(self, name: str) -> int:
        return int(self.store.conn.execute("SELECT id FROM drivers WHERE name = ?", (name,)).fetchone()[0])


def mixed_registry() -> dict[str, Any]:
    """Today's registry with two 2014 drivers beside the modern ones: one CI account, one review project."""
    doc = json.loads(DATA.read_text())
    for name, level in (("RBD", "external_ci_verification"), ("RBD (iSCSI)", "3rd_party_verification")):
        doc["drivers"].append({"project_id": "openstack/cinder", "vendor": "Ceph", "name": name,
                               "maintainer": {"name": "Josh Durgin", "email": "josh@example.org"},
                               "releases": ["Gazpacho"], "verification": level, "ci_id": "ceph-ci"})
    doc["drivers"].append({"project_id": "openstack/cinder", "vendor": "Ceph", "name": "RBD (self)",
                           "releases": ["Gazpacho"], "verification": "self_verification"})
    return doc
