"""The suite's fixtures; what they are made of is in ``driverlog_daemon.testing``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.expose.runtime import Live
from driverlog_daemon.expose.web.app import App
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.registry.load import Registry, load_registry
from driverlog_daemon.store import reads
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing import DATA, UPSTREAM, wait_until
from driverlog_daemon.testing.gerrit.setup import SSHEnv, start_in
from driverlog_daemon.testing.harness import Harness
from driverlog_daemon.testing.http import ThreadedServer
from driverlog_daemon.testing.site import EVIL_URL, NOW, XSS_ATTR, XSS_SCRIPT, Site, merged, vote


@pytest.fixture(scope="session", autouse=True)
def _validated_registries_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Commands remember registries found valid: here, in a folder of the test session, not in ~/.cache."""
    import os

    os.environ["DRIVERLOG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry(DATA)


@pytest.fixture(scope="session")
def upstream_registry() -> Registry:
    if not UPSTREAM.exists():
        pytest.skip(f"upstream registry not available at {UPSTREAM}")
    return load_registry(UPSTREAM)


@pytest.fixture
def store(tmp_path: Path, registry: Registry) -> Iterator[Store]:
    """A fresh database file with the shipped registry's drivers, written at a fixed time."""
    s = Store(tmp_path / "d.sqlite", clock=lambda: 1_800_000_000.0)
    s.sync_drivers(registry)
    yield s
    s.close()


@pytest.fixture
def ssh_env(tmp_path: Path) -> Iterator[SSHEnv]:
    env = start_in(tmp_path)
    yield env
    env.server.stop()


@pytest.fixture
def harness(ssh_env: SSHEnv, tmp_path: Path) -> Iterator[Harness]:
    """The service running against the test server, connected and past its first backfill."""
    with Harness(ssh_env, tmp_path) as h:
        assert wait_until(h.settled)
        yield h


@pytest.fixture
def site(tmp_path: Path, registry: Registry) -> Iterator[Site]:
    db = tmp_path / "driverlog.sqlite"
    store = Store(db)
    store.sync_drivers(registry)
    fc, iscsi, nova = "Acme Volume Driver (FC)", "Acme Volume Driver (iSCSI)", "Hooli Hypervisor Driver"
    store.commit(Batch("stream", [
        vote(registry, fc, 100, 2, NOW - 3600, "success", "Gazpacho", evidence=XSS_SCRIPT, url=EVIL_URL),
        vote(registry, iscsi, 100, 2, NOW - 3600, "failure", "Gazpacho", evidence=XSS_ATTR),
        vote(registry, fc, 101, 1, NOW - 60, "failure", "Gazpacho"),  # latest activity, not merged: no mark
        vote(registry, nova, 300, 1, NOW - 30 * 86400, "success", "Flamingo"),  # stale
    ], changes=[merged(100, 2, NOW - 1800), merged(300, 1, NOW - 30 * 86400, "openstack/nova")]))
    health: dict[str, Any] = {"ok": True}
    metrics = Metrics()
    metrics.watch_releases(lambda: reads.release_times(store.conn))
    app = App(db, lambda: registry, metrics, lambda: (health["ok"], {"events": 3}),
              live=lambda: Live("connected", int(time.time()) - 5, None), stale_after_days=7, max_staleness=0)
    web = ThreadedServer(app, "127.0.0.1", 0)
    web.start()
    yield Site(web, db, store, registry, health)
    web.stop()
    store.close()

