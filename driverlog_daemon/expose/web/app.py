"""The web tier's handlers: the status page, DriverLog's JSON API, badges, feeds, exports, ``/healthz``.

:mod:`routing` puts WSGI and the route table in front of them and :mod:`cache` keeps their answers. Every driver's
record is kept current off the request path (:mod:`records`), and the recent answers made from it are rendered
again before new records are published. Answers carry a strong ``ETag`` per representation (``If-None-Match`` ->
304), ``Cache-Control: public, max-age=…, stale-while-revalidate=…`` for HTTP caches, and are gzipped for clients
that accept it (:mod:`responses`). HTML is rendered by Jinja2 with autoescaping on, and every response forbids
scripts (``Content-Security-Policy``). The database is opened read-only; the reads are :mod:`store.reads`'s.
"""

from __future__ import annotations

import gzip
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2

from driverlog_daemon.expose import export
from driverlog_daemon.expose.runtime import Live
from driverlog_daemon.expose.web import api, badge, pages
from driverlog_daemon.expose.web.cache import AnswerCache, Key
from driverlog_daemon.expose.web.driver_view import DriverView
from driverlog_daemon.expose.web.records import Records, RecordsKeeper
from driverlog_daemon.expose.web.registry_view import RegistryView
from driverlog_daemon.expose.web.responses import (
    GZIP_MIN_BYTES,
    Held,
    Response,
    StartResponse,
    StreamedResponse,
    json_response,
    response,
    text_response,
)
from driverlog_daemon.expose.web.routing import Handler, HttpMetrics, Route, Router
from driverlog_daemon.registry import legacy
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import reads, reads_health, reads_history

ProcessHealth = Callable[[], tuple[bool, dict[str, Any]]]

TEMPLATES = Path(__file__).resolve().parent / "templates"
FEED_ENTRIES = 50
FEED_FILTERS = ("project_id", "vendor", "release_id", "release")


class App:
    def __init__(self, database: str | Path, registry: Callable[[], Registry], metrics: HttpMetrics,
                 process_health: ProcessHealth, *, live: Callable[[], Live] = Live, stale_after_days: float = 7.0,
                 silence_days: float = 14.0, max_age: int = 5, stale_while_revalidate: int = 30,
                 max_staleness: float = 5.0, clock: Callable[[], float] = time.time, export_seconds: float = 120.0,
                 max_exports: int = 4) -> None:
        self.reader = reads.Reader(database)
        self.registry = registry
        self.metrics = metrics
        self.process_health = process_health
        self.live = live
        self.stale_after_days = stale_after_days
        self.silence_days = silence_days
        self.max_staleness = max_staleness
        self.clock = clock
        self.export_seconds = export_seconds  # an export's whole time, and so its read snapshot's
        self._exports = threading.BoundedSemaphore(max_exports)  # streamed exports at once in this worker
        self.public_cache = f"public, max-age={max_age}, stale-while-revalidate={stale_while_revalidate}"
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                      finalize=pages.xml_safe)
        self.env.filters.update(safe_url=pages.safe_url, utc=pages.utc, linked=pages.linked, took=pages.took)
        self.env.globals.update(ago=self._ago, query_link=pages.query_link, percent=pages.percent,
                                verification_levels=legacy.VERIFICATION_LEVELS)
        self._local = threading.local()
        self.cache = AnswerCache()
        self.keeper = RecordsKeeper(self.reader, registry, self._build_records, max_staleness=max_staleness,
                                    clock=clock, prepare=self._prepare)
        self.driver_view = DriverView(self.reader, self._recs, self._html, clock, silence_days)
        self.registry_view = RegistryView(self.reader, self._html, lambda: process_health()[1].get("registry_fetch"))
        self.router = Router(self.routes(), metrics, self.cache, self._state, self._render)

    def routes(self) -> list[Route]:
        """The route table (``docs/routes.md`` lists it; a test holds the two equal)."""
        filters, ids = ("project_id", "vendor", "release_id", "release"), ("query",)
        return [Route(*r) for r in (
            (r"/", "/", self.page_index, "records", (*filters, "q", "at_risk")),
            (r"/drivers/(\d+)", "/drivers/<id>", self.driver_view.page, "database", ("page", "transitions_page")),
            (r"/static/style\.css", "/static/style.css", self.static_css, "records", ()),
            (r"/badge/(\d+)\.svg", "/badge/<id>.svg", self.badge_svg, "records", ()),
            (r"/api/1\.0/drivers", "/api/1.0/drivers", self.api_drivers, "records", filters),
            (r"/api/1\.0/drivers/(\d+)", "/api/1.0/drivers/<id>", self.api_driver, "records", ()),
            (r"/api/1\.0/drivers/(\d+)/history", "/api/1.0/drivers/<id>/history", self.api_history, "database",
             ("limit", "page")),
            (r"/api/1\.0/drivers/(\d+)/missed", "/api/1.0/drivers/<id>/missed", self.api_missed, "database",
             ("days",)),
            (r"/api/1\.0/drivers/(\d+)/jobs", "/api/1.0/drivers/<id>/jobs", self.driver_view.api_jobs, "database",
             ("days",)),
            (r"/api/1\.0/list/releases", "/api/1.0/list/releases", self.api_releases, "records", (*filters, *ids)),
            (r"/api/1\.0/list/releases/(.+)", "/api/1.0/list/releases/<id>", self.api_release, "records", filters),
            (r"/api/1\.0/list/project_ids", "/api/1.0/list/project_ids", self.api_project_ids, "records",
             (*filters, *ids)),
            (r"/api/1\.0/list/project_ids/(.+)", "/api/1.0/list/project_ids/<id>", self.api_project_id, "records",
             filters),
            (r"/api/1\.0/list/vendors", "/api/1.0/list/vendors", self.api_vendors, "records", (*filters, *ids)),
            (r"/api/1\.0/list/vendors/(.+)", "/api/1.0/list/vendors/<id>", self.api_vendor, "records", filters),
            (r"/api/1\.0/verifications", "/api/1.0/verifications", self.api_verifications, "database",
             ("limit", "after", "driver", "since")),
            (r"/api/1\.0/ingestion", "/api/1.0/ingestion", self.api_ingestion, "database", ("limit",)),
            (r"/ingestion", "/ingestion", self.page_ingestion, "database", ("limit",)),
            (r"/registry", "/registry", self.registry_view.page, "database", ("limit",)),
            (r"/api/1\.0/registry", "/api/1.0/registry", self.registry_view.api, "database", ("limit",)),
            (r"/feed\.atom", "/feed.atom", self.feed_all, "database", filters),
            (r"/drivers/(\d+)/feed\.atom", "/drivers/<id>/feed.atom", self.feed_driver, "database", ()),
            (r"/export/(marks)\.csv", "/export/marks.csv", self.export_csv, None, ("driver", "since", "until")),
            (r"/export/(verifications)\.csv", "/export/verifications.csv", self.export_csv, None,
             ("driver", "since", "until")),
            (r"/export/(jobs)\.csv", "/export/jobs.csv", self.export_csv, None, ("driver", "since", "until")),
            (r"/healthz", "/healthz", self.healthz, None, ()),
        )]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return self.router(environ, start_response)

    def _state(self, cached: str, name: str) -> Key:
        """What a route's answer is cached by (see :mod:`routing`); the page's header, to the minute, too, and the
        registry pages' last fetch (the daemon's live state, not in the database)."""
        made_from = self.records().key if cached == "records" else (
            self.reader.version(), id(self.registry()), int(self.clock() // 60))
        if name in ("/registry", "/api/1.0/registry"):
            return made_from, repr(self.registry_view.fetch())
        return made_from, self._live_key() if name == "/" else None

    def _render(self, handler: Handler, query: Mapping[str, str], groups: tuple[str, ...]) -> Response:
        answer = handler(query, *groups)
        assert isinstance(answer, Response), "a cached route's answer is whole"
        if answer.status.startswith("200"):
            answer.cache = self.public_cache
        return answer

    # ------------------------------------------------------------------------------------ records

    def records(self) -> Records:
        """Every registry driver's record (:mod:`driverlog_daemon.expose.web.records`); while the app re-renders its
        recent answers for new records, those."""
        preparing: Records | None = getattr(self._local, "preparing", None)
        return preparing if preparing is not None else self.keeper.current()

    def _build_records(self, conn: sqlite3.Connection, registry: Registry, now: float) -> list[dict[str, Any]]:
        rows = reads.drivers(conn)
        healths = reads_health.ci_health_of_drivers(conn, now, self.silence_days)
        return [api.driver_record(d, row, registry, now, self.stale_after_days,
                                  healths.get(row.id) if row is not None and d.ci is not None else None)
                for d in registry.drivers for row in (rows.get(d.key),)]

    def _prepare(self, fresh: Records) -> None:
        """Before new records are published: render the recent answers made from records again, gzip included,
        so that requests find them ready (the records thread does it, not a request)."""
        self._local.preparing = fresh
        try:
            for (path, query), (name, handler, groups) in self.cache.recent():
                answer = self._render(handler, dict(query), groups)
                if answer.status.startswith("200"):
                    if len(answer.body) >= GZIP_MIN_BYTES:
                        answer.gzipped = gzip.compress(answer.body, 6)
                    self.cache.store((path, query, fresh.key, self._live_key() if name == "/" else None), answer)
        finally:
            self._local.preparing = None

    # --------------------------------------------------------------------------------------- helpers

    def _live_key(self) -> tuple[str, int | None, str | None, str | None]:
        """The page's header to the minute: a new event does not make a new page every time."""
        live = self.live()
        return (live.gerrit, None if live.newest_event_time is None else live.newest_event_time // 60, live.open_gap,
                live.importing)

    def _ago(self, ts: int | None) -> str:
        return "" if ts is None else pages.ago(self.clock() - ts)

    def _recs(self) -> tuple[Registry, list[dict[str, Any]]]:
        current = self.records()
        return current.registry, current.records

    def _html(self, template: str, **context: Any) -> Response:
        body = self.env.get_template(template).render(**context).encode()
        return response("200 OK", "text/html; charset=utf-8", body)

    # ------------------------------------------------------------------------------------------ pages

    def page_index(self, query: Mapping[str, str]) -> Response:
        registry, records = self._recs()
        return self._html("index.html", registry=registry, live=self.live(), query=query,
                          stale_after_days=self.stale_after_days, silence_days=self.silence_days,
                          **pages.index(records, registry, query, self.clock(), self.stale_after_days))

    # ------------------------------------------------------------------------------------------ feeds

    def feed_all(self, query: Mapping[str, str]) -> Response:
        registry, records = self._recs()
        filters = api.Filters.parse(query)
        ids = None
        if filters.project_id or filters.vendor:
            ids = [r["id"] for r in records if r["id"] is not None and api.passes(
                r, api.Filters(filters.project_id, filters.vendor, None), registry, release=False)]
        given = sorted((k, v) for k, v in query.items() if k in FEED_FILTERS and v)
        with self.reader.snapshot() as conn:
            entries = reads_health.recent_transitions(conn, driver_ids=ids, releases=filters.release_ids,
                                                      limit=FEED_ENTRIES)
            created = reads.created_at(conn)
        described = ", ".join(f"{k} {v}" for k, v in given)
        return self._feed(entries, created, title="DriverLog marks" + (f" ({described})" if given else ""),
                          self_href="/feed.atom" + ("?" + urllib.parse.urlencode(given) if given else ""),
                          page_href="/")

    def feed_driver(self, query: Mapping[str, str], driver_id: str) -> Response:
        with self.reader.snapshot() as conn:
            known = reads.driver_key(conn, int(driver_id))
            if known is None:
                return text_response("404 Not Found", "no such driver")
            entries = reads_health.recent_transitions(conn, driver_ids=[int(driver_id)], limit=FEED_ENTRIES)
            created = reads.created_at(conn)
        return self._feed(entries, created, title=f"DriverLog marks: {known[0][2]} ({known[0][1]})",
                          self_href=f"/drivers/{driver_id}/feed.atom", page_href=f"/drivers/{driver_id}")

    def _feed(self, entries: list[dict[str, Any]], created: float, *, title: str, self_href: str,
              page_href: str) -> Response:
        from driverlog_daemon import __version__
        from driverlog_daemon.store.outbox import headline

        for e in entries:
            e["title"] = headline(e, e["release_name"])
            e["updated"] = export.iso(e["transition"]["at"])
            e["comment_time"] = export.iso(e["transition"]["comment_time"])
        # the newest entry's time: it changes only when the entries do (readers and caches poll cheaply)
        updated = entries[0]["updated"] if entries else export.iso(int(created))
        body = self.env.get_template("feed.atom").render(
            entries=entries, title=title, updated=updated, self_href=self_href, page_href=page_href,
            feed_id="urn:driverlog-daemon:feed:" + self_href, version=__version__).encode()
        return response("200 OK", "application/atom+xml; charset=utf-8", body)

    # ------------------------------------------------------------------------------------------ exports

    def export_csv(self, query: Mapping[str, str], kind: str) -> StreamedResponse | Response:
        driver_id = api.int_param(query, "driver", None, minimum=0)
        try:
            since, until = export.window(query.get("since"), query.get("until"))
        except ValueError as bad:
            raise api.BadRequest(str(bad)) from None
        if not self._exports.acquire(blocking=False):  # each holds a thread and a snapshot: a few at once
            busy = text_response("503 Service Unavailable", "too many exports at once; try again shortly")
            busy.headers.append(("Retry-After", "5"))
            return busy
        reader = self.reader

        def chunks() -> Iterator[bytes]:
            with reader.snapshot() as conn:  # one read transaction: a consistent export, however long
                yield from export.as_csv(conn, kind, driver_id=driver_id, since=since, until=until)

        return StreamedResponse("text/csv; charset=utf-8; header=present", Held(chunks(), self._exports.release),
                                filename=f"driverlog-{kind}.csv", deadline_seconds=self.export_seconds)

    def _ingestion(self, query: Mapping[str, str]) -> dict[str, Any]:
        limit = api.int_param(query, "limit", 50, minimum=1, maximum=500) or 50
        with self.reader.snapshot() as conn:
            return {**reads.ingestion(conn, limit=limit), "imports": reads_history.imports(conn, limit=limit)}

    def page_ingestion(self, query: Mapping[str, str]) -> Response:
        return self._html("ingestion.html", ledger=self._ingestion(query))

    def api_ingestion(self, query: Mapping[str, str]) -> Response:
        return json_response(self._ingestion(query))

    def static_css(self, query: Mapping[str, str]) -> Response:
        return response("200 OK", "text/css; charset=utf-8", (TEMPLATES / "style.css").read_bytes())

    def badge_svg(self, query: Mapping[str, str], driver_id: str) -> Response:
        _, records = self._recs()
        record = next((r for r in records if r["id"] == int(driver_id)), None)
        if record is None:
            return text_response("404 Not Found", "no such driver")
        body = self.env.get_template("badge.svg").render(b=badge.badge(record["status"])).encode()
        return response("200 OK", "image/svg+xml", body)

    def healthz(self, query: Mapping[str, str]) -> Response:
        ok, detail = self.process_health()
        answer = json_response({"status": "ok" if ok else "unhealthy", **detail},
                               "200 OK" if ok else "503 Service Unavailable")
        answer.cache = "no-cache"  # always asked again, never stored as fresh
        return answer

    # -------------------------------------------------------------------------------------------- API

    def api_drivers(self, query: Mapping[str, str]) -> Response:
        registry, records = self._recs()
        filters = api.Filters.parse(query)
        return json_response({"drivers": [r for r in records if api.passes(r, filters, registry)]})

    def api_driver(self, query: Mapping[str, str], driver_id: str) -> Response:
        _, records = self._recs()
        record = next((r for r in records if r["id"] == int(driver_id)), None)
        if record is None:
            return json_response({"error": "no such driver"}, "404 Not Found")
        return json_response({"driver": self.driver_view.with_latest_unjudged(record)})

    def api_history(self, query: Mapping[str, str], driver_id: str) -> Response:
        with self.reader.snapshot() as conn:
            if reads.driver_key(conn, int(driver_id)) is None:
                return json_response({"error": "no such driver"}, "404 Not Found")
            limit = api.int_param(query, "limit", 100, minimum=1, maximum=1000) or 100
            page = api.int_param(query, "page", 1, minimum=1) or 1
            transitions, total = reads_health.transitions(conn, int(driver_id), limit=limit, offset=(page - 1) * limit)
            return json_response({"transitions": transitions, "total": total, "page": page,
                                  "pages": max(1, -(-total // limit))})

    def api_missed(self, query: Mapping[str, str], driver_id: str) -> Response:
        days = api.int_param(query, "days", 30, minimum=1, maximum=365) or 30
        with self.reader.snapshot() as conn:
            if reads.driver_key(conn, int(driver_id)) is None:
                return json_response({"error": "no such driver"}, "404 Not Found")
            missed = reads_health.missed(conn, int(driver_id), self.clock(), days)
            return json_response({"days": days, "missed": missed})

    def _filtered(self, query: Mapping[str, str], **which: bool) -> list[dict[str, Any]]:
        registry, records = self._recs()
        filters = api.Filters.parse(query)
        return [r for r in records if api.passes(r, filters, registry, **which)]

    def api_releases(self, query: Mapping[str, str]) -> Response:
        return json_response({"releases": api.releases_list(self._filtered(query, release=False),
                                                            query.get("query", ""))})

    def api_release(self, query: Mapping[str, str], release: str) -> Response:
        known = self.registry().releases_by_lower_id.get(release.lower())
        if known is None:
            return json_response({"error": "no such release"}, "404 Not Found")
        return json_response({"release": {"id": known.id.lower(), "text": known.id.capitalize()}})

    def api_project_ids(self, query: Mapping[str, str]) -> Response:
        return json_response({"project_ids": api.project_ids_list(self._filtered(query, project=False),
                                                                  query.get("query", ""))})

    def api_project_id(self, query: Mapping[str, str], project_id: str) -> Response:
        name = self.registry().projects.get(project_id)
        if name is None:
            return json_response({"error": "no such project"}, "404 Not Found")
        return json_response({"project_id": {"id": project_id, "text": name}})

    def api_vendors(self, query: Mapping[str, str]) -> Response:
        return json_response({"vendors": api.vendors_list(self._filtered(query, vendor=False),
                                                          query.get("query", ""))})

    def api_vendor(self, query: Mapping[str, str], vendor: str) -> Response:
        vendors = {d.vendor.lower(): d.vendor for d in self.registry().drivers}
        if vendor.lower() not in vendors:
            return json_response({"error": "no such vendor"}, "404 Not Found")
        return json_response({"vendor": {"id": vendors[vendor.lower()], "text": vendors[vendor.lower()]}})

    def api_verifications(self, query: Mapping[str, str]) -> Response:
        limit = api.int_param(query, "limit", 100, minimum=1, maximum=1000) or 100
        after = api.int_param(query, "after", 0) or 0
        driver = api.int_param(query, "driver", None)
        since = api.int_param(query, "since", None)
        with self.reader.snapshot() as conn:
            rows = reads.verifications(conn, driver_id=driver, since=since, after=after, limit=limit)
        following = None
        if len(rows) == limit:
            following = "/api/1.0/verifications?" + urllib.parse.urlencode(
                {k: v for k, v in {"driver": driver, "since": since, "limit": limit, "after": rows[-1]["id"]}.items()
                 if v is not None})
        return json_response({"verifications": rows, "next": following})

