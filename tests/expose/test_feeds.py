"""Atom feeds of mark transitions, read by a real feed parser (feedparser) over real HTTP."""

from __future__ import annotations

import calendar
from typing import Any

import feedparser
import pytest

from driverlog_daemon.store.store import Batch
from driverlog_daemon.testing.site import EMAIL, NOW, XSS_ATTR, XSS_SCRIPT, Site, merged, vote

FC, ISCSI, NOVA = "Acme Volume Driver (FC)", "Acme Volume Driver (iSCSI)", "Hooli Hypervisor Driver"


def parse(site: Site, path: str) -> Any:
    status, headers, body = site.get(path)
    assert status == 200 and headers["content-type"] == "application/atom+xml; charset=utf-8", (path, body[:200])
    feed = feedparser.parse(f"http://127.0.0.1:{site.web.port}{path}")  # fetched by feedparser itself
    assert feed.status == 200 and not feed.bozo, feed.get("bozo_exception")
    return feed, body


def test_the_feed_of_every_driver_is_valid_atom_newest_first(site: Site) -> None:
    site.store.commit(Batch("stream", [vote(site.registry, FC, 400, 1, NOW - 100, "failure", "Gazpacho")],
                            changes=[merged(400, 1, NOW - 50)]))
    feed, body = parse(site, "/feed.atom")
    assert feed.version == "atom10"
    titles = [e.title for e in feed.entries]
    assert titles[0] == f"{FC}, Gazpacho: passing → failing" and titles[3] == f"{NOVA}, Flamingo: no mark → passing"
    assert sorted(titles[1:3]) == [f"{FC}, Gazpacho: no mark → passing", f"{ISCSI}, Gazpacho: no mark → failing"]
    assert len(titles) == 4  # (the two in the middle merged at the same time)
    history = site.json(f"/api/1.0/drivers/{site.driver_id(FC)}/history")["transitions"]
    newest = feed.entries[0]
    assert newest.id == f"urn:driverlog-daemon:transition:{history[0]['id']}"  # stable: the transition's id
    assert calendar.timegm(newest.updated_parsed) == history[0]["at"] == NOW - 50
    assert calendar.timegm(feed.feed.updated_parsed) == NOW - 50  # the newest entry's time
    links = {link.rel: link.href for link in newest.links}
    assert links["alternate"] == f"http://127.0.0.1:{site.web.port}/drivers/{site.driver_id(FC)}"
    assert links["related"] == "https://review.example.org/c/openstack/cinder/+/400"
    assert newest.summary.startswith("- job https://ci/400 : FAILURE (change 400, patch set 1, commented ")
    assert not EMAIL.search(body.decode())


def test_hostile_comments_and_urls_are_inert_in_the_feed(site: Site) -> None:
    feed, body = parse(site, "/feed.atom")
    text = body.decode()
    assert "<script>" not in text and "<img" not in text and "javascript:" not in text.split("<entry>", 1)[1]
    # the evidence comes back as the plain text it was (type text): a reader shows it, runs nothing
    fc = next(e for e in feed.entries if e.title.startswith(FC))
    assert fc.summary_detail.type == "text/plain" and fc.summary.startswith(XSS_SCRIPT + " (change 100")
    assert "related" not in {link.rel for link in fc.links}  # javascript: is never a link
    iscsi = next(e for e in feed.entries if e.title.startswith(ISCSI))
    assert iscsi.summary_detail.type == "text/plain" and iscsi.summary.startswith(XSS_ATTR + " (change 100")


def test_characters_xml_forbids_never_reach_the_feed(site: Site) -> None:
    hostile = "- job\x01 fc\x1f : FAILURE\ufffe \x0b"
    site.store.commit(Batch("stream", [vote(site.registry, FC, 400, 1, NOW - 100, "failure", "Gazpacho",
                                            evidence=hostile)], changes=[merged(400, 1, NOW - 50)]))
    feed, _ = parse(site, "/feed.atom")  # no bozo: well-formed XML
    assert feed.entries[0].summary.startswith("- job fc : FAILURE  (change 400")
    echoed, body = parse(site, "/feed.atom?vendor=%01acme%EF%BF%BE")  # the filter is echoed in the title
    assert b"\x01" not in body and echoed.feed.title == "DriverLog marks (vendor acme)"


@pytest.mark.parametrize(("query", "titles"), [
    ("vendor=hooli", [f"{NOVA}, Flamingo: no mark → passing"]),
    ("project_id=openstack/cinder&release_id=gazpacho", [f"{FC}, Gazpacho: no mark → passing",
                                                         f"{ISCSI}, Gazpacho: no mark → failing"]),
    ("release_id=flamingo", [f"{NOVA}, Flamingo: no mark → passing"]),
    ("vendor=nobody", []),
])
def test_the_feed_takes_the_pages_filters(site: Site, query: str, titles: list[str]) -> None:
    feed, _ = parse(site, f"/feed.atom?{query}")
    assert sorted(e.title for e in feed.entries) == sorted(titles)
    assert all(f.split("=")[1].lower() in feed.feed.title.lower() for f in query.split("&"))


def test_a_drivers_feed_and_its_links_from_the_pages(site: Site) -> None:
    fc = site.driver_id(FC)
    feed, _ = parse(site, f"/drivers/{fc}/feed.atom")
    assert [e.title for e in feed.entries] == [f"{FC}, Gazpacho: no mark → passing"]
    assert feed.feed.title == f"DriverLog marks: {FC} (Acme Storage)"
    assert site.get("/drivers/99999/feed.atom")[0] == 404
    page = site.get(f"/drivers/{fc}")[2].decode()
    assert f'<link rel="alternate" type="application/atom+xml" title="Mark changes of {FC}" ' \
           f'href="/drivers/{fc}/feed.atom">' in page
    assert '<link rel="alternate" type="application/atom+xml" title="Mark changes, every driver" href="/feed.atom">' \
        in site.get("/")[2].decode()


def test_the_feed_changes_only_when_its_entries_do(site: Site) -> None:
    status, headers, first = site.get("/feed.atom")
    assert status == 200 and b"<entry>" in first
    site.store.commit(Batch("stream", [vote(site.registry, FC, 500, 1, NOW - 30, "success", "Gazpacho")]))  # no merge
    again = site.get("/feed.atom", headers={"If-None-Match": headers["etag"]})
    assert again[0] == 304  # the database changed, the feed did not
    site.store.commit(Batch("stream", [], changes=[merged(401, 1, NOW - 20)]))
    site.store.commit(Batch("stream", [vote(site.registry, ISCSI, 401, 1, NOW - 25, "success", "Gazpacho")]))
    changed = site.get("/feed.atom", headers={"If-None-Match": headers["etag"]})
    assert changed[0] == 200 and changed[1]["etag"] != headers["etag"]
    assert feedparser.parse(changed[2]).entries[0].title == f"{ISCSI}, Gazpacho: failing → passing"


def test_a_time_past_year_9999_breaks_no_page_feed_or_export(site: Site) -> None:
    # a file an earlier version wrote (the parser now refuses such stamps): every answer is whole
    far = 300_000_000_000  # the year 11476
    site.store.commit(Batch("stream", [vote(site.registry, FC, 401, 1, far, "failure", "Gazpacho")],
                            changes=[merged(401, 1, far)]))
    driver = site.driver_id(FC)
    for path in ("/", f"/drivers/{driver}", f"/drivers/{driver}/feed.atom", "/api/1.0/drivers",
                 f"/api/1.0/drivers/{driver}", f"/api/1.0/drivers/{driver}/history", "/api/1.0/verifications",
                 "/export/verifications.csv", "/export/marks.csv"):
        status, _, body = site.get(path)
        assert status == 200, (path, body[:300])
    feed, _ = parse(site, "/feed.atom")
    assert feed.entries[0].updated.startswith("9999-12-31")  # as far as the format reaches
    rows = site.get("/export/verifications.csv")[2].decode().splitlines()
    assert any(",401," in r and "9999-12-31T23:59:59Z" in r for r in rows)  # the CSV is whole
