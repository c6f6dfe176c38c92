"""``/registry`` and ``/api/1.0/registry`` over real HTTP on a real file: every registry version the file applied,
newest first, with its source, digest, counts and what it changed against the one before; a driver's page says
when its entry last changed; names from a registry are escaped, and no maintainer's address is served."""

from __future__ import annotations

import copy
import hashlib
import html
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.expose.runtime import Live
from driverlog_daemon.expose.web.app import App
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.registry.load import parse_registry
from driverlog_daemon.store.registry_apply import apply
from driverlog_daemon.store.store import Store
from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.http import ThreadedServer
from driverlog_daemon.testing.net import http_get
from driverlog_daemon.testing.site import EMAIL

HOSTILE = "<script>alert(1)</script> Driver"


def _versions() -> list[dict[str, Any]]:
    first = json.loads(DATA.read_text())
    second = copy.deepcopy(first)
    initech = next(d for d in second["drivers"] if d["name"] == "Initech FlashBlade NVMe-TCP")
    initech["ci"]["success_pattern"] = r"initech-nvme-tcp-tempest \S+ : PASSED"
    initech["maintainers"] = [{"name": "New Maintainer", "email": "new.maintainer@example.org"}]
    second["drivers"].append({**copy.deepcopy(initech), "name": HOSTILE})
    third = copy.deepcopy(second)
    third["drivers"] = [d for d in third["drivers"] if d["name"] != "Wayne OVN Gateway"]
    return [first, second, third]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Path, list[bytes], Store]]:
    db = tmp_path / "driverlog.sqlite"
    store = Store(db)
    raws = [json.dumps(v, indent=1).encode() for v in _versions()]
    for i, raw in enumerate(raws):
        apply(store, parse_registry(raw, f"https://example.org/registry/{i}.json"), raw,
              f"https://example.org/registry/{i}.json", None, 1_800_000_000.0 + 3600 * i)
    apply(store, parse_registry(raws[-1]), raws[-1], "again", None, 1_800_020_000.0)  # the same: no version
    fetch = {"at": 1_800_030_000.0, "ok": False, "error": "HTTP 500 from https://example.org/registry/3.json"}
    app = App(db, lambda: parse_registry(raws[-1]), Metrics(), lambda: (True, {"registry_fetch": fetch}),
              live=lambda: Live("connected"), max_staleness=0)
    web = ThreadedServer(app, "127.0.0.1", 0)
    web.start()
    yield web.port, db, raws, store
    web.stop()
    store.close()


def test_the_api_lists_each_version_newest_first_with_its_diff(served: tuple[int, Path, list[bytes], Store]) -> None:
    port, _, raws, _ = served
    status, _, body = http_get(port, "/api/1.0/registry")
    assert status == 200
    got = json.loads(body)
    assert [v["sha256"] for v in got["versions"]] == [hashlib.sha256(r).hexdigest() for r in reversed(raws)]
    assert got["total"] == 3 and got["current"]["id"] == got["versions"][0]["id"]
    assert got["current"]["source"] == "https://example.org/registry/2.json"
    assert got["current"]["drivers"] == len(_versions()[2]["drivers"])
    assert got["last_fetch"]["ok"] is False and "HTTP 500" in got["last_fetch"]["error"]
    newest, middle, first = got["versions"]
    assert newest["changes"]["drivers"]["removed"] == [
        {"project_id": "openstack/neutron", "vendor": "Wayne Enterprises", "name": "Wayne OVN Gateway"}]
    assert newest["changes"]["bindings"]["removed"][0]["name"] == "Wayne OVN Gateway"
    assert [c["fields"] for c in middle["changes"]["drivers"]["changed"]] == [["maintainers", "ci.success_pattern"]]
    assert [a["name"] for a in middle["changes"]["drivers"]["added"]] == [HOSTILE]
    assert first["previous"] is None and len(first["changes"]["drivers"]["added"]) == len(_versions()[0]["drivers"])
    assert not EMAIL.search(body.decode())
    status, _, body = http_get(port, "/api/1.0/registry?limit=1")
    assert [v["id"] for v in json.loads(body)["versions"]] == [newest["id"]]


def test_the_page_shows_the_versions_escaped_and_is_linked_from_the_header(
        served: tuple[int, Path, list[bytes], Store]) -> None:
    port, _, _, _ = served
    status, _, body = http_get(port, "/registry")
    text = body.decode()
    assert status == 200
    assert "<script>alert" not in text and html.escape(HOSTILE, quote=False) in text
    assert "drivers: 0 added, 1 removed, 0 changed" in text
    assert "~ driver openstack/cinder/Initech/Initech FlashBlade NVMe-TCP: maintainers, ci.success_pattern" in text
    assert "HTTP 500 from https://example.org/registry/3.json" in text  # the last fetch failed: said so
    assert not EMAIL.search(text)
    _, _, index = http_get(port, "/")
    assert 'href="/registry"' in index.decode()


def test_a_driver_page_says_when_its_entry_last_changed(served: tuple[int, Path, list[bytes], Store]) -> None:
    port, _, _, store = served
    ids = dict(store.conn.execute("SELECT name, id FROM drivers"))
    _, _, body = http_get(port, f"/drivers/{ids['Initech FlashBlade NVMe-TCP']}")
    assert "changed 2027-01-15 09:00 UTC: maintainers, ci.success_pattern" in body.decode()
    _, _, body = http_get(port, f"/drivers/{ids['Umbrella HyperScale']}")
    assert "in the registry since 2027-01-15 08:00 UTC" in body.decode()


def test_two_files_with_the_same_version_ids_get_their_own_diffs(tmp_path: Path) -> None:
    # one process (a web worker, a test run) may read several files: a diff is named by the registries' digests
    from driverlog_daemon.store import reads_registry, schema

    got = []
    for name, renamed in (("a", b"Acme Volume Driver (FC)"), ("b", b"Umbrella HyperScale")):
        with Store(tmp_path / f"{name}.sqlite") as store:
            for raw in (DATA.read_bytes(), DATA.read_bytes().replace(renamed, renamed + b" 2")):
                apply(store, parse_registry(raw), raw, name, None, 1_800_000_000.0)
        conn = schema.connect(tmp_path / f"{name}.sqlite", readonly=True)
        got.append(reads_registry.versions(conn, limit=5)[1][0]["changes"]["drivers"]["added"][0]["name"])
        conn.close()
    assert got == ["Acme Volume Driver (FC) 2", "Umbrella HyperScale 2"]
