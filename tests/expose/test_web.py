"""The web side over real HTTP (a threaded test server on 127.0.0.1): page, API, badges, /healthz, /metrics."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import threading
import time
from typing import Any

import pytest

from driverlog_daemon.expose.web.app import App
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.model import BackfillRun
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.store import Batch
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.site import EMAIL, EVIL_URL, NOW, XSS_SCRIPT, Site, driver, merged, vote

# ------------------------------------------------------------------------------------------------- serving


def test_binds_loopback_by_default(site: Site) -> None:
    assert site.web.listen == "127.0.0.1"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(site: Site, method: str) -> None:
    for path in ("/", "/api/1.0/drivers", "/metrics", "/nope"):
        status, headers, _ = site.get(path, method)
        assert status == 405 and headers["allow"] == "GET, HEAD", (method, path)


def test_head_has_the_headers_and_no_body(site: Site) -> None:
    get = site.get("/api/1.0/drivers")
    status, headers, body = site.get("/api/1.0/drivers", "HEAD")
    assert status == 200 and body == b""
    assert headers["content-length"] == get[1]["content-length"] and headers["etag"] == get[1]["etag"]


def test_unknown_path_404_and_bad_values_400_in_one_line(site: Site) -> None:
    assert site.get("/nope")[0] == 404
    assert site.get("/drivers/99999")[0] == 404
    assert site.get("/api/1.0/drivers/99999")[0] == 404
    for huge in ("/drivers/99999999999999999999", "/api/1.0/drivers/99999999999999999999",
                 "/drivers/99999999999999999999/feed.atom"):
        assert site.get(huge)[0] == 404, huge  # past 63 bits: no such driver, not a 500
    assert site.get("/api/1.0/list/project_ids/openstack/swift")[0] == 404
    for path, reason in (("/api/1.0/verifications?limit=x", b"limit must be an integer, not 'x'\n"),
                         ("/api/1.0/verifications?driver=-1", b"driver must be at least 0\n"),
                         ("/drivers/1?page=0", b"page must be at least 1\n"),
                         ("/drivers/1?page=99999999999999999999", b"page must be at most 9223372036854775807\n"),
                         ("/api/1.0/verifications?driver=99999999999999999999",
                          b"driver must be at most 9223372036854775807\n")):
        status, headers, body = site.get(path)
        assert (status, body) == (400, reason), path
        assert headers["content-type"].startswith("text/plain")


def test_etag_304_and_gzip(site: Site) -> None:
    status, headers, body = site.get("/")
    assert status == 200 and headers["etag"]
    again = site.get("/", headers={"If-None-Match": headers["etag"]})
    assert again[0] == 304 and again[2] == b""
    status, zipped_headers, zipped = site.get("/", headers={"Accept-Encoding": "gzip, br"})
    assert zipped_headers["content-encoding"] == "gzip" and gzip.decompress(zipped) == body
    assert "Accept-Encoding" in zipped_headers["vary"]
    for refused in ("gzip;q=0", "gzip; q=0.0, identity", "*;q=0", "br, *;q=0", "identity"):
        status, plain_headers, plain = site.get("/", headers={"Accept-Encoding": refused})
        assert "content-encoding" not in plain_headers and plain == body, refused
    for taken in ("gzip;q=0.5", "*", "br;q=1, *;q=0.1", "GZIP"):
        assert site.get("/", headers={"Accept-Encoding": taken})[1].get("content-encoding") == "gzip", taken


def test_only_a_200_is_not_modified(site: Site) -> None:
    for path, status in (("/drivers/424242", 404), ("/api/1.0/verifications?limit=0", 400)):
        first = site.get(path)
        assert first[0] == status and first[1].get("etag")
        again = site.get(path, headers={"If-None-Match": first[1]["etag"]})
        assert again[0] == status and again[2] == first[2], path


def test_cached_answers_follow_the_database(site: Site) -> None:
    before = site.get("/api/1.0/drivers?release_id=epoxy")
    fc = next(d for d in json.loads(before[2])["drivers"] if d["name"] == "Acme Volume Driver (FC)")
    assert fc["releases"]["epoxy"] == {"ci_tested": False}
    site.store.commit(Batch("stream", [vote(site.registry, "Acme Volume Driver (FC)", 200, 1, NOW - 10, "success",
                                            "Epoxy")], changes=[merged(200, 1, NOW)]))
    after = site.get("/api/1.0/drivers?release_id=epoxy")
    assert after[1]["etag"] != before[1]["etag"]
    fc = next(d for d in json.loads(after[2])["drivers"] if d["name"] == "Acme Volume Driver (FC)")
    assert fc["releases"]["epoxy"]["ci_tested"] is True


def test_the_web_side_cannot_write(site: Site) -> None:
    app: App = site.web.app
    with pytest.raises(sqlite3.OperationalError, match="readonly"), app.reader.snapshot() as conn:
        conn.execute("DELETE FROM verifications")
    assert site.store.conn.execute("SELECT count(*) FROM verifications").fetchone()[0] == 4


def test_healthz(site: Site) -> None:
    status, _, body = site.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    site.health["ok"] = False
    status, _, body = site.get("/healthz")
    assert status == 503 and json.loads(body) == {"status": "unhealthy", "events": 3}


def test_metrics_without_created_series_with_release_gauges_and_requests(site: Site) -> None:
    site.get("/api/1.0/drivers")
    site.get("/nope")
    status, headers, body = site.get("/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert "_created" not in text
    assert 'driverlog_http_requests_total{route="/api/1.0/drivers",status="200"} 1.0' in text
    assert 'driverlog_http_requests_total{route="other",status="404"} 1.0' in text
    samples = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line and not line.startswith("#")}
    labels = '{driver="Acme Volume Driver (FC)",project="openstack/cinder",release="Gazpacho",vendor="Acme Storage"}'
    assert samples["driverlog_driver_release_last_mark_success_timestamp_seconds" + labels] == NOW - 3600
    assert samples["driverlog_driver_release_last_verification_timestamp_seconds" + labels] == NOW - 60
    iscsi = labels.replace("(FC)", "(iSCSI)")
    assert "driverlog_driver_release_last_mark_success_timestamp_seconds" + iscsi not in samples  # a failing mark


# -------------------------------------------------------------------------------------------- DriverLog API


def test_drivers_api_has_upstreams_shape_and_ours(site: Site) -> None:
    drivers = site.json("/api/1.0/drivers")["drivers"]
    fc = next(d for d in drivers if d["name"] == "Acme Volume Driver (FC)")
    registry_fc = driver(site.registry, "Acme Volume Driver (FC)")
    assert set(fc) == {"project_id", "vendor", "name", "description", "wiki", "maintainers", "ci", "releases",
                       "releases_info", "project_name", "id", "latest", "status", "health"}
    assert fc["project_name"] == "Cinder (Block Storage)"
    assert set(fc["releases"]) == {r.lower() for r in registry_fc.releases}
    assert fc["releases"]["gazpacho"] == {"ci_tested": True, "ci_result": True, "comment": XSS_SCRIPT,
                                          "timestamp": NOW - 3600, "review_url": EVIL_URL}
    assert fc["releases"]["caracal"] == {"ci_tested": False}
    assert [i["release_id"] for i in fc["releases_info"]] == sorted(r.lower() for r in registry_fc.releases)
    assert fc["releases_info"][0] == {"release_id": "caracal", "name": "Caracal",
                                      "wiki": "https://releases.openstack.org/caracal/"}
    assert fc["latest"]["change_number"] == 101 and fc["latest"]["result"] == "failure"
    # one spelling of a release id in every answer: DriverLog's, the lower-case keys of ``releases``
    assert fc["latest"]["release"] in fc["releases"]
    history = site.json(f"/api/1.0/drivers/{fc['id']}/history")["transitions"]
    assert history and all(t["release"] in fc["releases"] for t in history)
    assert fc["status"] == "passing"  # the mark, not the latest work-in-progress failure
    assert fc["maintainers"] == [{"name": "Jane Dev", "launchpad_id": "jdev"}]
    statuses = {d["name"]: d["status"] for d in drivers}
    assert statuses["Acme Volume Driver (iSCSI)"] == "failing"
    assert statuses["Hooli Hypervisor Driver"] == "stale"
    assert statuses["Stark Arc vGPU"] == "unknown"


def test_drivers_api_filters(site: Site) -> None:
    def names(q: str) -> set[str]:
        return {d["name"] for d in site.json(f"/api/1.0/drivers{q}")["drivers"]}
    everything = {d.name for d in site.registry.drivers}
    active = {d.name for d in site.registry.drivers
              if any(r.active for r in site.registry.releases if r.id in d.releases)}
    assert names("") == active
    assert names("?release_id=yoga") == {"Cyberdyne T-Series NFS"}
    assert names("?release_id=" + ",".join(r.id.lower() for r in site.registry.releases)) == everything
    assert names("?release=yoga,zed") == names("?release_id=zed,yoga")
    assert names("?project_id=OPENSTACK/NOVA") == {"Hooli Hypervisor Driver", "Stark Arc vGPU"}
    assert names("?vendor=acme%20storage&project_id=openstack/cinder") == {
        "Acme Volume Driver (FC)", "Acme Volume Driver (iSCSI)"}
    one = site.json(f"/api/1.0/drivers/{site.driver_id('Stark Arc vGPU')}")["driver"]
    assert one["name"] == "Stark Arc vGPU" and one["status"] == "unknown"


def test_list_endpoints(site: Site) -> None:
    releases = site.json("/api/1.0/list/releases?vendor=Tyrell")["releases"]
    assert releases == [{"id": "gazpacho", "text": "Gazpacho"}, {"id": "flamingo", "text": "Flamingo"},
                        {"id": "epoxy", "text": "Epoxy"}]
    assert site.json("/api/1.0/list/releases?vendor=Tyrell&query=FLA")["releases"] == [
        {"id": "flamingo", "text": "Flamingo"}]
    assert site.json("/api/1.0/list/releases/caracal") == {"release": {"id": "caracal", "text": "Caracal"}}
    projects = site.json("/api/1.0/list/project_ids?query=net")["project_ids"]
    assert projects == [{"id": "openstack/neutron", "text": "Neutron (Networking)"}]
    assert site.json("/api/1.0/list/project_ids/openstack/nova") == {
        "project_id": {"id": "openstack/nova", "text": "Nova (Compute)"}}
    vendors = [v["id"] for v in site.json("/api/1.0/list/vendors?project_id=openstack/ironic")["vendors"]]
    assert vendors == ["Massive Dynamic", "Tyrell"]
    assert site.json("/api/1.0/list/vendors/tyrell") == {"vendor": {"id": "Tyrell", "text": "Tyrell"}}


def test_verifications_api_pages_through_everything_once(site: Site) -> None:
    fc = "Acme Volume Driver (FC)"
    site.store.commit(Batch("replay", [vote(site.registry, fc, 1000 + i, 1, NOW - i, "success", "Gazpacho")
                                       for i in range(25)]))
    seen: list[int] = []
    url: str | None = f"/api/1.0/verifications?driver={site.driver_id(fc)}&limit=10"
    while url:
        page = site.json(url)
        seen += [v["change_number"] for v in page["verifications"]]
        assert all(v["driver"] == fc for v in page["verifications"])
        url = page["next"]
    assert sorted(seen) == sorted([100, 101, *range(1000, 1025)]) and len(seen) == len(set(seen))
    site.store.commit(Batch("replay", [vote(site.registry, fc, 5000 + i, 1, NOW - i, "success", "")
                                       for i in range(1100)]))
    capped = site.json("/api/1.0/verifications?limit=5000")
    assert len(capped["verifications"]) == 1000 and "limit=1000" in capped["next"]
    assert len(site.json("/api/1.0/verifications")["verifications"]) == 100
    since = site.json(f"/api/1.0/verifications?since={NOW - 5}&limit=1000")["verifications"]
    assert {v["change_number"] for v in since if v["change_number"] < 5000} == {1000, 1001, 1002, 1003, 1004, 1005}


# ------------------------------------------------------------------------------------------------ the page


def test_page_shows_marks_latest_activity_and_header(site: Site) -> None:
    status, headers, body = site.get("/")
    page = body.decode()
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "Gerrit: connected" in page and re.search(r"newest event: [5-9] s ago", page)
    assert f"{len(site.registry.drivers)} drivers" in page
    assert "3 with a mark" in page  # FC and iSCSI (Gazpacho), Hooli (Flamingo, stale but a mark)
    assert page.count('class="mark pass"') >= 1 and 'class="mark fail"' in page
    assert f'href="/drivers/{site.driver_id("Acme Volume Driver (FC)")}"' in page
    assert '?project_id=openstack%2Fnova' in page  # filters are plain links


def test_driver_page_has_facts_and_paginated_history(site: Site) -> None:
    fc = "Acme Volume Driver (FC)"
    site.store.commit(Batch("replay", [vote(site.registry, fc, 2000 + i, 1, NOW - 100 - i, "success", "Gazpacho")
                             for i in range(60)]))
    did = site.driver_id(fc)
    first = site.get(f"/drivers/{did}")[2].decode()
    assert "Fibre Channel volume driver" in first and "Jane Dev" in first
    verifications = first.split("<h2>Verifications")[1]  # the mark history and the missed changes come before
    assert "page 1 of 2" in first and verifications.count("<tr>") == 50 + 1
    second = site.get(f"/drivers/{did}?page=2")[2].decode()
    assert second.split("<h2>Verifications")[1].count("<tr>") == 12 + 1 and "page 2 of 2" in second


def test_badges(site: Site) -> None:
    status, headers, body = site.get(f"/badge/{site.driver_id('Acme Volume Driver (FC)')}.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    assert b">passing</text>" in body and b"<script" not in body
    assert b">stale</text>" in site.get(f"/badge/{site.driver_id('Hooli Hypervisor Driver')}.svg")[2]
    assert b">unknown</text>" in site.get(f"/badge/{site.driver_id('Stark Arc vGPU')}.svg")[2]
    assert b">failing</text>" in site.get(f"/badge/{site.driver_id('Acme Volume Driver (iSCSI)')}.svg")[2]


# --------------------------------------------------------------------------------------- safe by construction


def test_hostile_comments_and_urls_are_inert_everywhere(site: Site) -> None:
    fc, iscsi = site.driver_id("Acme Volume Driver (FC)"), site.driver_id("Acme Volume Driver (iSCSI)")
    pages = ["/", f"/drivers/{fc}", f"/drivers/{iscsi}", f"/badge/{fc}.svg", "/api/1.0/drivers",
             f"/api/1.0/drivers/{fc}", "/api/1.0/verifications"]
    for path in pages:
        status, headers, body = site.get(path)
        text = body.decode()
        assert status == 200, path
        assert "<script" not in text and "<img src=x" not in text, path
        assert 'href="javascript:' not in text and "href='javascript:" not in text, path
        assert "script-src" not in headers["content-security-policy"], path
        assert "default-src 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path
    page = site.get(f"/drivers/{fc}")[2].decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in site.get(f"/drivers/{iscsi}")[2].decode()
    assert "<td>100,2</td>" in page  # the change whose URL is not http(s) is shown, without a link


def test_no_email_address_is_served(site: Site) -> None:
    assert any("email" in m for d in site.registry.drivers for m in d.maintainers)  # the registry has them
    for path in ["/", *(f"/drivers/{site.driver_id(d.name)}" for d in site.registry.drivers),
                 "/api/1.0/drivers?release_id=" + ",".join(r.id.lower() for r in site.registry.releases),
                 "/api/1.0/verifications"]:
        assert not EMAIL.search(site.get(path)[2].decode()), path


def test_the_ingestion_ledger_page_and_api(site: Site) -> None:
    store = site.store
    server = "review.example.org:29418"
    first = store.open_gap(server, NOW - 7200, "start")
    store.commit(Batch("backfill", [], close_gaps=(server, first, None),
                       backfill=(server, BackfillRun("start", NOW - 7800, NOW - 100.0, 11, 14, 1, 420, 37, 0.0))))
    second = store.open_gap(server, NOW - 600, "reconnect")
    store.gap_failed(server, second, "CommandError: <script>alert(1)</script>")
    data = site.json("/api/1.0/ingestion")
    assert [(g["id"], g["reason"]) for g in data["gaps"]] == [(second, "reconnect"), (first, "start")]
    still_open, closed = data["gaps"]
    assert still_open["closed_at"] is None and still_open["backfill"] is None and still_open["attempts"] == 1
    assert closed["backfill"]["commands"] == 14 and closed["backfill"]["repasses"] == 1
    assert closed["backfill"]["recovered"] == 0 and closed["since"] == NOW - 7200
    assert data["totals"] == {"gaps": 2, "open_gaps": 1, "backfills": 1, "commands": 14, "pages": 14,
                              "repasses": 1, "recovered": 0, "throttled_seconds": 0.0,
                              "since": closed["backfill"]["started_at"], "imports": 0, "import_commands": 0}
    assert data["imports"] == []
    assert site.json("/api/1.0/ingestion?limit=1")["gaps"][0]["id"] == second
    status, _, body = site.get("/ingestion")
    assert status == 200 and b"Ingestion ledger" in body and b"1 open gaps" in body
    assert b"<script>alert" not in body and b"&lt;script&gt;" in body
    _, _, index = site.get("/")
    assert b'href="/ingestion"' in index  # linked from every page's header


def test_answers_never_wait_on_a_rebuild_within_the_staleness_bound(site: Site, registry: Registry,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """After a commit the records are rebuilt by a background thread; meanwhile requests get the previous answer
    at once — unless it is older than max_staleness behind the database, then they wait for the new one."""
    from driverlog_daemon.store import reads as reads_mod

    fc = "Acme Volume Driver (FC)"
    app = App(site.db, lambda: registry, Metrics(), lambda: (True, {}), max_staleness=60)
    did = site.driver_id(fc)
    latest = lambda: next(r for r in app.records().records if r["id"] == did)["latest"]["change_number"]  # noqa: E731
    assert latest() == 101
    real, slow = reads_mod.drivers, threading.Event()

    def slow_drivers(conn: Any) -> Any:
        slow.wait(10)  # a rebuild that takes as long as the test lets it
        return real(conn)

    monkeypatch.setattr(reads_mod, "drivers", slow_drivers)
    site.store.commit(Batch("stream", [vote(registry, fc, 102, 1, NOW - 30, "success", "Gazpacho")]))
    assert latest() == 101  # the previous records, while the rebuild (which would say 102) is held back
    slow.set()
    assert wait_until(lambda: latest() == 102)  # rebuilt in the background: no request had to wait for it
    bounded = App(site.db, lambda: registry, Metrics(), lambda: (True, {}), max_staleness=0)
    assert next(r for r in bounded.records().records if r["id"] == did)["latest"]["change_number"] == 102


def test_a_parameter_no_route_reads_neither_changes_the_answer_nor_misses_the_cache(site: Site) -> None:
    cache = site.web.app.cache
    driver = site.driver_id("Acme Volume Driver (FC)")
    for path in ("/", f"/drivers/{driver}", "/api/1.0/drivers", "/feed.atom"):
        status, headers, body = site.get(path)
        held = len(cache._answers)
        for junk in ("?x=1", "?x=2&y=3", "?cachebuster=%01"):
            again = site.get(path + junk)
            assert (again[0], again[1]["etag"], again[2]) == (status, headers["etag"], body), path + junk
        assert len(cache._answers) == held, path  # answered from the one cached answer
    assert site.get("/api/1.0/drivers?vendor=hooli")[1]["etag"] != site.get("/api/1.0/drivers")[1]["etag"]


def test_mark_histories_come_a_page_at_a_time(site: Site) -> None:
    fc = site.driver_id("Acme Volume Driver (FC)")
    results = ["failure", "success"] * 40  # 80 transitions, each result flips the mark
    site.store.commit(Batch("stream", [vote(site.registry, "Acme Volume Driver (FC)", 500 + i, 1, NOW - 5000 + i,
                                            r, "Gazpacho") for i, r in enumerate(results)],
                            changes=[merged(500 + i, 1, NOW - 5000 + i) for i in range(len(results))]))
    first = site.json(f"/api/1.0/drivers/{fc}/history?limit=30")
    total = first["total"]
    assert total >= 80 and len(first["transitions"]) == 30 and first["pages"] == -(-total // 30)
    last = site.json(f"/api/1.0/drivers/{fc}/history?limit=30&page={first['pages']}")
    everything = site.json(f"/api/1.0/drivers/{fc}/history?limit=1000")["transitions"]
    assert [t["id"] for t in first["transitions"] + last["transitions"]] == (
        [t["id"] for t in everything[:30]] + [t["id"] for t in everything[(first["pages"] - 1) * 30:]])
    page = site.get(f"/drivers/{fc}")[2].decode()
    assert page.count("→ <span class=\"act") == 50 and "?transitions_page=2" in page


def test_a_log_url_in_the_evidence_is_a_link_and_nothing_else_is(site: Site) -> None:
    evidence = ("- acme-fc https://ci.example.org/logs/400/?a=1&b=<2> : FAILURE in 58m, see "
                "javascript:alert(1) or http://ci.example.org/x.")
    site.store.commit(Batch("stream", [vote(site.registry, "Acme Volume Driver (FC)", 400, 1, NOW - 100, "failure",
                                            "Gazpacho", evidence=evidence)]))
    page = site.get(f"/drivers/{site.driver_id('Acme Volume Driver (FC)')}")[2].decode()
    assert ('<a href="https://ci.example.org/logs/400/?a=1&amp;b=" rel="noreferrer nofollow">'
            'https://ci.example.org/logs/400/?a=1&amp;b=</a>&lt;2&gt;') in page  # escaped, cut at the "<"
    assert '<a href="http://ci.example.org/x" rel="noreferrer nofollow">http://ci.example.org/x</a>.' in page
    assert 'href="javascript:' not in page and "javascript:alert(1)" in page  # text, never a link


def test_releases_run_newest_first_on_every_page(site: Site) -> None:
    newest_first = [r.id.capitalize() for r in reversed(site.registry.releases)]
    driver = site.get(f"/drivers/{site.driver_id('Acme Volume Driver (FC)')}")[2].decode()
    marks = driver.split('class="marks">', 1)[1].split("</dd>", 1)[0]
    shown = [r for r in newest_first if r in marks]
    assert len(shown) >= 2 and sorted(shown, key=marks.index) == shown  # the index's order


def test_at_risk_unknown_for_every_driver_is_not_shown_as_zero(site: Site) -> None:
    drivers = site.json("/api/1.0/drivers")["drivers"]
    assert all(d["health"] is None or d["health"]["at_risk"] is None for d in drivers)  # a short history
    page = site.get("/")[2].decode()
    assert "at risk only (not known yet)" in page and "at risk only (0)" not in page


def test_the_chart_has_dated_axes(site: Site) -> None:
    page = site.get(f"/drivers/{site.driver_id('Acme Volume Driver (FC)')}")[2].decode()
    axis = page.split('<div class="chart-axis">', 1)[1].split("</div>", 1)[0]
    days = re.findall(r'<time datetime="(\d{4}-\d\d-\d\d)">', axis)
    today = int(time.time() // 86400)
    assert days == [time.strftime("%Y-%m-%d", time.gmtime(d * 86400)) for d in (today - 89, today - 44, today)]
