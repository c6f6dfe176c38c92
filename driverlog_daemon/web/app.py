"""The WSGI application: the status page, DriverLog's JSON API, badges, ``/healthz`` and ``/metrics``.

Read-only by construction: the database is opened with ``mode=ro`` and only GET and HEAD are answered (405 with
``Allow`` for the rest). Every driver's record is rebuilt by a background thread when the database changes, while
requests keep getting the previous records (never older than ``max_staleness`` behind the database: past that a
request waits for the rebuild). Responses are cached per records (or database state), registry and minute; they
carry a strong ``ETag`` per representation (``If-None-Match`` -> 304), ``Cache-Control: public, max-age=…,
stale-while-revalidate=…`` for HTTP caches, and are gzipped for clients that accept it. HTML is rendered by Jinja2
with autoescaping on, and every response forbids scripts (``Content-Security-Policy``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jinja2
import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from driverlog_daemon import reads
from driverlog_daemon.registry import Registry
from driverlog_daemon.web import api, badge

log = structlog.get_logger("driverlog.web")

Health = Callable[[], tuple[bool, dict[str, Any]]]


class HttpMetrics(Protocol):
    """What the app counts: ``metrics.Metrics`` in a test, ``metrics.WebMetrics`` in the web tier."""

    http_requests: Any

    def exposition(self) -> bytes: ...


StartResponse = Callable[..., Any]
TEMPLATES = Path(__file__).resolve().parent / "templates"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
CACHE_ENTRIES = 512
REFRESH_POLL_SECONDS = 0.2  # how often the background thread looks at the database's state
GZIP_MIN_BYTES = 1024
HISTORY_PAGE = 50


@dataclass(frozen=True, slots=True)
class Live:
    """What the page's header shows that the database does not hold."""

    gerrit: str = "not configured"  # connected, connecting, …
    newest_event_time: int | None = None
    open_gap: str | None = None  # a backfill gap not yet closed, in words


class _Records(NamedTuple):
    key: tuple[Any, ...]  # (database state, registry, minute)
    registry: Registry
    records: list[dict[str, Any]]


@dataclass(slots=True)
class Response:
    status: str
    content_type: str
    body: bytes
    etag: str = ""
    gzipped: bytes | None = None
    cache: str = "no-store"  # Cache-Control
    headers: list[tuple[str, str]] = field(default_factory=list)


def _response(status: str, content_type: str, body: bytes) -> Response:
    return Response(status, content_type, body, '"' + hashlib.sha256(body).hexdigest()[:24] + '"')


def json_response(obj: Any, status: str = "200 OK") -> Response:
    """JSON with ``<``, ``>`` and ``&`` escaped: the same values, inert even if pasted into HTML."""
    text = json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026")
    return _response(status, "application/json", text.encode() + b"\n")


def text_response(status: str, text: str) -> Response:
    return _response(status, "text/plain; charset=utf-8", text.encode() + b"\n")


def safe_url(url: object) -> str | None:
    """Only http and https URLs become links; anything else (``javascript:``, ``data:``) is shown as text."""
    if not isinstance(url, str):
        return None
    scheme = urllib.parse.urlsplit(url.strip()).scheme.lower()
    return url if scheme in ("http", "https") else None


def ago(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} s ago"


def utc(ts: int | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


class App:
    def __init__(self, database: str | Path, registry: Callable[[], Registry], metrics: HttpMetrics, health: Health,
                 *, live: Callable[[], Live] = Live, stale_after_days: float = 7.0, max_age: int = 5,
                 stale_while_revalidate: int = 30, max_staleness: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.reader = reads.Reader(database)
        self.registry = registry
        self.metrics = metrics
        self.health = health
        self.live = live
        self.stale_after_days = stale_after_days
        self.max_staleness = max_staleness
        self.clock = clock
        self.public_cache = f"public, max-age={max_age}, stale-while-revalidate={stale_while_revalidate}"
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(safe_url=safe_url, utc=utc)
        self.env.globals.update(ago=self._ago, query_link=_query_link)
        self._cache: OrderedDict[tuple[Any, ...], Response] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._records: _Records | None = None
        self._records_lock = threading.Lock()  # one rebuild at a time
        self._stale_since: float | None = None  # when the records were first seen behind the database
        self._refresher: threading.Thread | None = None
        self._wake = threading.Event()
        # Each route's answer is cached by the records it was made from ("records"), by the database's state
        # ("database": it reads the database itself), or not at all (None).
        self._routes: list[tuple[re.Pattern[str], str, Callable[..., Response], str | None]] = [
            (re.compile(p), name, handler, cached) for p, name, handler, cached in (
                (r"/", "/", self.page_index, "records"),
                (r"/drivers/(\d+)", "/drivers/<id>", self.page_driver, "database"),
                (r"/static/style\.css", "/static/style.css", self.static_css, "records"),
                (r"/badge/(\d+)\.svg", "/badge/<id>.svg", self.badge_svg, "records"),
                (r"/api/1\.0/drivers", "/api/1.0/drivers", self.api_drivers, "records"),
                (r"/api/1\.0/drivers/(\d+)", "/api/1.0/drivers/<id>", self.api_driver, "records"),
                (r"/api/1\.0/list/releases", "/api/1.0/list/releases", self.api_releases, "records"),
                (r"/api/1\.0/list/releases/(.+)", "/api/1.0/list/releases/<id>", self.api_release, "records"),
                (r"/api/1\.0/list/project_ids", "/api/1.0/list/project_ids", self.api_project_ids, "records"),
                (r"/api/1\.0/list/project_ids/(.+)", "/api/1.0/list/project_ids/<id>", self.api_project_id,
                 "records"),
                (r"/api/1\.0/list/vendors", "/api/1.0/list/vendors", self.api_vendors, "records"),
                (r"/api/1\.0/list/vendors/(.+)", "/api/1.0/list/vendors/<id>", self.api_vendor, "records"),
                (r"/api/1\.0/verifications", "/api/1.0/verifications", self.api_verifications, "database"),
                (r"/api/1\.0/ingestion", "/api/1.0/ingestion", self.api_ingestion, "database"),
                (r"/ingestion", "/ingestion", self.page_ingestion, "database"),
                (r"/healthz", "/healthz", self.healthz, None),
            )]

    # ------------------------------------------------------------------------------------------- WSGI

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        route = "other"
        try:
            if method not in ("GET", "HEAD"):
                response = text_response("405 Method Not Allowed", "only GET and HEAD are answered")
                response.headers.append(("Allow", "GET, HEAD"))
            elif path == "/metrics":
                route = "/metrics"
                self.metrics.http_requests.labels(route, "200").inc()
                response = Response("200 OK", CONTENT_TYPE_LATEST, self.metrics.exposition(), cache="no-cache")
            else:
                route, response = self._dispatch(path, environ.get("QUERY_STRING", ""))
        except Exception as exc:  # never a traceback to the client
            log.error("http_error", path=path[:200], error=f"{type(exc).__name__}: {exc}")
            response = text_response("500 Internal Server Error", "internal error; see the daemon's log")
        if route != "/metrics":
            self.metrics.http_requests.labels(route, response.status[:3]).inc()
        return self._send(environ, start_response, response, head=method == "HEAD")

    def _dispatch(self, path: str, query_string: str) -> tuple[str, Response]:
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(query_string, keep_blank_values=True).items()}
        for pattern, name, handler, cached in self._routes:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            try:
                if cached is None:
                    return name, handler(query, *m.groups())
                state = self.records().key if cached == "records" else (self.reader.version(), id(self.registry()),
                                                                        int(self.clock() // 60))
                key = (path, tuple(sorted(query.items())), state, self._live_key() if name == "/" else None)
                with self._cache_lock:
                    hit = self._cache.get(key)
                    if hit is not None:
                        self._cache.move_to_end(key)
                        return name, hit
                response = handler(query, *(urllib.parse.unquote(g) for g in m.groups()))
                if response.status.startswith("200"):
                    response.cache = self.public_cache
                    with self._cache_lock:
                        self._cache[key] = response
                        while len(self._cache) > CACHE_ENTRIES:
                            self._cache.popitem(last=False)
                return name, response
            except api.BadRequest as bad:
                return name, text_response("400 Bad Request", str(bad))
        return "other", text_response("404 Not Found", "not found")

    def _send(self, environ: dict[str, Any], start_response: StartResponse, r: Response,
              head: bool) -> Iterable[bytes]:
        headers = [("Content-Type", r.content_type), ("X-Content-Type-Options", "nosniff"),
                   ("Content-Security-Policy", CSP), ("Referrer-Policy", "no-referrer"), *r.headers,
                   ("Cache-Control", r.cache)]
        body, etag = r.body, r.etag
        gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "") and len(body) >= GZIP_MIN_BYTES
        if gzipped:
            if r.gzipped is None:
                r.gzipped = gzip.compress(body, 6)
            body = r.gzipped
            etag = etag and etag[:-1] + '-gzip"'  # a strong validator names one representation
        if etag:
            headers += [("ETag", etag), ("Vary", "Accept-Encoding")]
            if etag in [t.strip() for t in environ.get("HTTP_IF_NONE_MATCH", "").split(",")]:
                start_response("304 Not Modified", headers[1:])
                return [b""]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response(r.status, headers)
        return [b""] if head else [body]

    # --------------------------------------------------------------------------------------- records

    def _records_key(self, registry: Registry) -> tuple[Any, ...]:
        return self.reader.version(), id(registry), int(self.clock() // 60)

    def records(self) -> _Records:
        """Every registry driver's record, rebuilt in the background when the database changes. A request gets
        the records at hand unless they are behind the database by more than ``max_staleness``; then (and for
        the very first request) it waits for the rebuild."""
        self._start_refresher()
        current = self._records
        key = self._records_key(self.registry())
        if current is not None and current.key == key:
            self._stale_since = None
            return current
        now = time.monotonic()
        if self._stale_since is None:
            self._stale_since = now
        self._wake.set()
        if current is not None and now - self._stale_since < self.max_staleness:
            return current
        return self._rebuild()

    def _rebuild(self) -> _Records:
        with self._records_lock:  # one rebuild at a time; the others then find it done
            registry = self.registry()
            key = self._records_key(registry)
            if self._records is not None and self._records.key == key:
                return self._records
            with self.reader.snapshot() as conn:
                rows = reads.drivers(conn)
            now = self.clock()
            self._records = _Records(key, registry, [
                api.driver_record(d, rows.get(d.key), registry, now, self.stale_after_days)
                for d in registry.drivers])
            self._stale_since = None
            return self._records

    def _start_refresher(self) -> None:
        # Started on first use, in the process that serves (a pre-fork server's workers), never before a fork.
        if self._refresher is None or not self._refresher.is_alive():
            with self._records_lock:
                if self._refresher is None or not self._refresher.is_alive():
                    self._refresher = threading.Thread(target=self._refresh_loop, name="driverlog-web-records",
                                                       daemon=True)
                    self._refresher.start()

    def _refresh_loop(self) -> None:
        while True:
            self._wake.wait(REFRESH_POLL_SECONDS)
            self._wake.clear()
            try:
                current = self._records
                if current is None or current.key != self._records_key(self.registry()):
                    self._rebuild()
            except Exception as exc:  # a database being replaced, say: the next round tries again
                log.warning("records_rebuild_failed", error=f"{type(exc).__name__}: {exc}")

    # --------------------------------------------------------------------------------------- helpers

    def _live_key(self) -> tuple[str, int | None, str | None]:
        """The page's header to the minute: a new event does not make a new page every time."""
        live = self.live()
        return live.gerrit, None if live.newest_event_time is None else live.newest_event_time // 60, live.open_gap

    def _ago(self, ts: int | None) -> str:
        return "" if ts is None else ago(self.clock() - ts)

    def _recs(self) -> tuple[Registry, list[dict[str, Any]]]:
        current = self.records()
        return current.registry, current.records

    def _html(self, template: str, **context: Any) -> Response:
        body = self.env.get_template(template).render(**context).encode()
        return _response("200 OK", "text/html; charset=utf-8", body)

    # ------------------------------------------------------------------------------------------ pages

    def page_index(self, query: Mapping[str, str]) -> Response:
        registry, records = self._recs()
        filters = api.Filters.parse(query)
        shown_releases = [r for r in reversed(registry.releases)  # newest first
                          if (r.id.lower() in filters.release_ids if filters.release_ids is not None else r.active)]
        chosen = [r for r in records if api.passes(r, filters, registry, release=filters.release_ids is not None)]
        by_project: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(chosen, key=lambda r: (r["project_name"], r["vendor"].lower(), r["name"].lower())):
            by_project.setdefault(r["project_name"], []).append(r)
        now = self.clock()
        stale = now - self.stale_after_days * 86400
        accounts: dict[str, int] = {}
        for r in records:
            if "ci" in r:
                last = r["latest"]["timestamp"] if r["latest"] else 0
                accounts[r["ci"]["id"]] = max(accounts.get(r["ci"]["id"], 0), last)
        counts = {"drivers": len(records), "with_mark": sum(1 for r in records if any(
            v["ci_tested"] for v in r["releases"].values())),
                  "silent": sum(1 for t in accounts.values() if t < stale), "ci_accounts": len(accounts)}
        return self._html("index.html", by_project=by_project, releases=shown_releases, filters=filters,
                          registry=registry, live=self.live(), counts=counts, query=query,
                          vendors=sorted({r["vendor"] for r in records}, key=str.lower),
                          stale_after_days=self.stale_after_days)

    def page_driver(self, query: Mapping[str, str], driver_id: str) -> Response:
        page = api.int_param(query, "page", 1, minimum=1) or 1
        registry, records = self._recs()
        record = next((r for r in records if r["id"] == int(driver_id)), None)
        with self.reader.snapshot() as conn:
            known = reads.driver_key(conn, int(driver_id))
            if known is None:
                return text_response("404 Not Found", "no such driver")
            history, total = reads.history(conn, int(driver_id), limit=HISTORY_PAGE,
                                             offset=(page - 1) * HISTORY_PAGE)
        pages = max(1, -(-total // HISTORY_PAGE))
        return self._html("driver.html", record=record, key=known[0], removed=known[1], history=history,
                          page=page, pages=pages, total=total, driver_id=int(driver_id), registry=registry)

    def _ingestion(self, query: Mapping[str, str]) -> dict[str, Any]:
        limit = api.int_param(query, "limit", 50, minimum=1, maximum=500) or 50
        with self.reader.snapshot() as conn:
            return reads.ingestion(conn, limit=limit)

    def page_ingestion(self, query: Mapping[str, str]) -> Response:
        return self._html("ingestion.html", ledger=self._ingestion(query))

    def api_ingestion(self, query: Mapping[str, str]) -> Response:
        return json_response(self._ingestion(query))

    def static_css(self, query: Mapping[str, str]) -> Response:
        return _response("200 OK", "text/css; charset=utf-8", (TEMPLATES / "style.css").read_bytes())

    def badge_svg(self, query: Mapping[str, str], driver_id: str) -> Response:
        _, records = self._recs()
        record = next((r for r in records if r["id"] == int(driver_id)), None)
        if record is None:
            return text_response("404 Not Found", "no such driver")
        body = self.env.get_template("badge.svg").render(b=badge.badge(record["status"])).encode()
        return _response("200 OK", "image/svg+xml", body)

    def healthz(self, query: Mapping[str, str]) -> Response:
        ok, detail = self.health()
        response = json_response({"status": "ok" if ok else "unhealthy", **detail},
                                 "200 OK" if ok else "503 Service Unavailable")
        response.cache = "no-cache"  # always asked again, never stored as fresh
        return response

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
        return json_response({"driver": record})

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


def _query_link(query: Mapping[str, str], **changes: str | None) -> str:
    """``?…`` with ``changes`` applied to ``query`` (None removes a key): the page's filter links."""
    merged = {k: v for k, v in {**query, **changes}.items() if v is not None and k != "page"}
    return "?" + urllib.parse.urlencode(sorted(merged.items())) if merged else "?"
