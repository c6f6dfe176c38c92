"""The web side's test data: a site (the app over real HTTP on a file), verifications as the matcher makes them,
hostile strings from Gerrit, and a registry of both forms (today's and 2014's)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driverlog_daemon.model import ChangeFact, Verification
from driverlog_daemon.registry.checks import DEFAULT_REGISTRY_PATH
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.store import Store
from driverlog_daemon.testing.http import ThreadedServer
from driverlog_daemon.testing.net import http_get

NOW = int(time.time())
XSS_SCRIPT = "- acme-cinder-fc <script>alert(1)</script> : SUCCESS"
XSS_ATTR = '- acme-cinder-iscsi "><img src=x onerror=alert(1)> : FAILURE'
EVIL_URL = "javascript:alert(1)"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def driver(registry: Registry, name: str) -> Any:
    return next(d for d in registry.drivers if d.name == name)


def verification(registry: Registry, *, name: str | None = None, driver_index: int = 0, number: int = 1000,
                 ps: int = 1, t: int = 1_750_000_000, result: str = "success", release: str = "Gazpacho",
                 sha: str = "a" * 64, evidence: str | None = None, url: str | None = None,
                 change_id: str | None = "I" + "0" * 40) -> Verification:
    """A verification of the driver ``name`` (else the ``driver_index``-th CI driver) as the matcher makes one."""
    d = driver(registry, name) if name is not None else [d for d in registry.drivers if d.ci][driver_index]
    assert d.ci is not None
    return Verification(
        driver_key=d.key, ci_account=d.ci.account, change_number=number, patch_set=ps, comment_sha256=sha,
        comment_time=t, result=result,  # type: ignore[arg-type]
        evidence=evidence or f"- job : {result.upper()}", project=d.review_project, branch="master",
        release=release, change_status="NEW", review_url=url or f"https://review.example.org/{number}",
        change_id=change_id)


def vote(registry: Registry, name: str, number: int, ps: int, t: int, result: str, release: str,
         evidence: str | None = None, url: str | None = None, sha: str = "a") -> Verification:
    """The web tests' verification: ``name``'s result on a change, linked to it, with ``sha`` x 64 as its hash."""
    project = driver(registry, name).review_project
    return verification(registry, name=name, number=number, ps=ps, t=t, result=result, release=release,
                        sha=sha * 64, evidence=evidence or f"- job https://ci/{number} : {result.upper()}",
                        url=url or f"https://review.example.org/c/{project}/+/{number}", change_id=None)


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
    doc: dict[str, Any] = json.loads(DEFAULT_REGISTRY_PATH.read_text())
    for name, level in (("RBD", "external_ci_verification"), ("RBD (iSCSI)", "3rd_party_verification")):
        doc["drivers"].append({"project_id": "openstack/cinder", "vendor": "Ceph", "name": name,
                               "maintainer": {"name": "Josh Durgin", "email": "josh@example.org"},
                               "releases": ["Gazpacho"], "verification": level, "ci_id": "ceph-ci"})
    doc["drivers"].append({"project_id": "openstack/cinder", "vendor": "Ceph", "name": "RBD (self)",
                           "releases": ["Gazpacho"], "verification": "self_verification"})
    return doc
