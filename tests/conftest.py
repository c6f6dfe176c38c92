from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.registry import Registry, load_registry

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "default_data.json"
UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"


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


def line(ev: dict[str, Any]) -> bytes:
    """One stream line, compact as Gerrit writes it."""
    return json.dumps(ev, separators=(",", ":")).encode() + b"\n"


def other_event(kind: str = "patchset-created", created_on: int = 1_750_000_000) -> dict[str, Any]:
    return {"uploader": {"name": "Jane Dev", "username": "jdev"},
            "change": {"project": "openstack/nova", "branch": "master", "number": 1, "status": "NEW"},
            "patchSet": {"number": 1}, "type": kind, "eventCreatedOn": created_on}


@pytest.fixture
def ssh_env(tmp_path: Path):  # type: ignore[no-untyped-def]
    from .gerrit import make_env

    env = make_env(tmp_path)
    yield env
    env.server.stop()
