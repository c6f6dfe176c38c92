"""WSGI in front of the handlers: method check, ``/metrics``, the route table, the cache, errors, counting.

Read-only by construction: only GET and HEAD are answered (405 with ``Allow`` for the rest). Each route says what
its answer is cached by: the records it was made from ("records"), the database's state ("database": it reads
the database itself), or nothing (None: the only routes that may stream, and ``/healthz``).
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from driverlog_daemon.expose.web import api
from driverlog_daemon.expose.web.cache import AnswerCache, Key
from driverlog_daemon.expose.web.responses import Response, StartResponse, StreamedResponse, send, text_response

log = structlog.get_logger("driverlog.web")

Answer = Response | StreamedResponse  # what a route handler gives: whole, or streamed (an export)
Handler = Callable[..., Answer]


class HttpMetrics(Protocol):
    """What the app counts: ``metrics.Metrics`` in a test, ``metrics.WebMetrics`` in the web tier."""

    http_requests: Any

    def exposition(self) -> bytes: ...


class Route(NamedTuple):
    pattern: str  # a regular expression matched against the whole path; its groups are the handler's arguments
    name: str  # the path's shape, the ``route`` label of driverlog_http_requests_total
    handler: Handler
    cached: str | None  # "records", "database" or None
    params: tuple[str, ...] = ()  # the query parameters it reads: any other is ignored (and not in the cache key)


class Router:
    """The WSGI callable over ``routes``. ``state(cached, name)``: the state an answer of that route is cached by;
    ``render(handler, query, groups)``: a cached route's whole answer."""

    def __init__(self, routes: Iterable[Route], metrics: HttpMetrics, cache: AnswerCache,
                 state: Callable[[str, str], Key], render: Callable[[Handler, Mapping[str, str], tuple[str, ...]],
                                                                    Response]) -> None:
        self.routes = [(re.compile(r.pattern), r) for r in routes]
        self.metrics, self.cache, self.state, self.render = metrics, cache, state, render

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        route = "other"
        try:
            if method not in ("GET", "HEAD"):
                answer = text_response("405 Method Not Allowed", "only GET and HEAD are answered")
                answer.headers.append(("Allow", "GET, HEAD"))
            elif path == "/metrics":
                route = "/metrics"
                self.metrics.http_requests.labels(route, "200").inc()
                answer = Response("200 OK", CONTENT_TYPE_LATEST, self.metrics.exposition(), cache="no-cache")
            else:
                route, dispatched = self.dispatch(path, environ.get("QUERY_STRING", ""))
                if isinstance(dispatched, StreamedResponse):
                    self.metrics.http_requests.labels(route, "200").inc()
                    return dispatched.send(environ, start_response, head=method == "HEAD")
                answer = dispatched
        except Exception as exc:  # never a traceback to the client
            log.error("http_error", path=path[:200], error=f"{type(exc).__name__}: {exc}")
            answer = text_response("500 Internal Server Error", "internal error; see the daemon's log")
        if route != "/metrics":
            self.metrics.http_requests.labels(route, answer.status[:3]).inc()
        return send(environ, start_response, answer, head=method == "HEAD")

    def dispatch(self, path: str, query_string: str) -> tuple[str, Answer]:
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(query_string, keep_blank_values=True).items()}
        for pattern, route in self.routes:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            query = {k: v for k, v in query.items() if k in route.params}  # junk cannot miss the cache
            try:
                groups = tuple(urllib.parse.unquote(g) for g in m.groups())
                if any(g.isdigit() and len(g) > 18 for g in groups):  # past SQLite's 63 bits: no row has it (not 500)
                    return route.name, text_response("404 Not Found", "not found")
                if route.cached is None:
                    return route.name, route.handler(query, *groups)
                items = tuple(sorted(query.items()))
                if route.cached == "records":
                    self.cache.asked((path, items), (route.name, route.handler, groups))
                key = (path, items, *self.state(route.cached, route.name))
                return route.name, self.cache.answer(key, functools.partial(self.render, route.handler, query, groups))
            except api.BadRequest as bad:
                return route.name, text_response("400 Bad Request", str(bad))
        return "other", text_response("404 Not Found", "not found")
