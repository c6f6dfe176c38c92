"""A registry followed from its URL by the daemon, against the Gerrit SSH test server and a registry served over
real HTTP: a change merged in ``follow_project``, pushed through the stream, has the new registry applied within
seconds (no polling: ``refresh_seconds = 0``), through the checks and the history step a SIGHUP's file takes; an
invalid one is refused and the old one stays, ``last_fetch`` saying why; a restart with the source down starts
with the copy kept; and with no copy, the start refuses, naming the URL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.config import RegistryConfig
from driverlog_daemon.registry.load import RegistryError
from driverlog_daemon.testing import DATA, wait_until
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import state_event
from driverlog_daemon.testing.gerrit.setup import SSHEnv
from driverlog_daemon.testing.harness import Harness
from driverlog_daemon.testing.registry_server import RegistryServer

FOLLOWED = "x/driverlog"


@pytest.fixture
def served() -> Iterator[RegistryServer]:
    server = RegistryServer(DATA.read_bytes()).start()
    yield server
    server.stop()


def _with_driver(name: str) -> bytes:
    doc: dict[str, Any] = json.loads(DATA.read_text())
    doc["drivers"].append({"project_id": "openstack/nova", "vendor": "Newco", "name": name,
                           "ci": {"id": "newco-ci", "success_pattern": r"newco-tempest \S+ : SUCCESS",
                                  "failure_pattern": r"newco-tempest \S+ : FAILURE"}})
    return json.dumps(doc, indent=1).encode()


def _config(served: RegistryServer) -> RegistryConfig:
    return RegistryConfig(url=served.url, follow_project=FOLLOWED, refresh_seconds=0, timeout_seconds=2)


def _names(db: Path) -> set[str]:
    return {r[0] for r in query(db, "SELECT name FROM drivers WHERE removed_at IS NULL")}


def test_a_merge_in_the_followed_project_applies_the_new_registry(ssh_env: SSHEnv, tmp_path: Path,
                                                                   served: RegistryServer) -> None:
    with Harness(ssh_env, tmp_path, registry_config=_config(served)) as h:
        assert wait_until(h.settled)
        assert "Newco Compute" not in _names(h.db)
        served.publish(_with_driver("Newco Compute"))
        asked = len(served.requests)
        ssh_env.server.push_event(state_event("change-merged", 4242, 3, project="openstack/nova"))  # not followed
        h.flush()
        assert len(served.requests) == asked  # nobody asked: not the followed project, and no polling
        ssh_env.server.push_event(state_event("change-merged", 4243, 2, project=FOLLOWED))
        assert wait_until(lambda: "Newco Compute" in _names(h.db), timeout=10)  # no polling: the merge asked
        assert "newco-ci" in h.service.pipeline.registry.ci_accounts
        versions = query(h.db, "SELECT source FROM registry_versions ORDER BY id")
        assert [v[0] for v in versions] == [served.url, served.url]
        assert h.metric("driverlog_registry_fetches_total", {"result": "new"}) == 2  # the start's and this one
        assert h.metric("driverlog_registry_reloads_total", {"result": "ok"}) == 1

        # an invalid registry merged: refused, the one in force stays, last_fetch says why
        served.publish(b'{"projects": [], "releases": [], "drivers": [{"name": 1}]}')
        ssh_env.server.push_event(state_event("change-merged", 4244, 1, project=FOLLOWED))
        assert wait_until(lambda: h.metric("driverlog_registry_fetches_total", {"result": "invalid"}) >= 1)
        fetch = h.service.process_health()[1]["registry_fetch"]
        assert fetch["ok"] is False and fetch["error"].startswith("invalid registry: ")
        assert "Newco Compute" in _names(h.db) and len(query(h.db, "SELECT id FROM registry_versions")) == 2
        assert h.metric("driverlog_registry_reloads_total", {"result": "error"}) == 1


def test_a_restart_with_the_source_down_starts_with_the_copy_kept(ssh_env: SSHEnv, tmp_path: Path,
                                                                  served: RegistryServer) -> None:
    served.publish(_with_driver("Newco Kept"))
    with Harness(ssh_env, tmp_path, registry_config=_config(served)) as h:
        assert wait_until(h.settled)
    served.fault = "500"
    with Harness(ssh_env, tmp_path, registry_config=_config(served)) as h:
        assert "newco-ci" in h.service.pipeline.registry.ci_accounts  # the copy kept, not the shipped file
        fetch = h.service.process_health()[1]["registry_fetch"]
        assert fetch["ok"] is False and "HTTP 500" in fetch["error"]
    with pytest.raises(RegistryError) as refused:  # no copy kept (another directory): nothing to start with
        Harness(ssh_env, tmp_path / "elsewhere", registry_config=_config(served))
    assert served.url in str(refused.value.source)
    assert "cannot fetch" in refused.value.errors[0] and "HTTP 500" in refused.value.errors[0]
