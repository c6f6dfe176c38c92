"""The HTTP side over real requests: /metrics, /healthz, GET/HEAD only."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from driverlog_daemon.config import HttpConfig
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.web import WebServer


@pytest.fixture
def server() -> Iterator[tuple[WebServer, dict[str, Any]]]:
    state: dict[str, Any] = {"ok": True}
    metrics = Metrics()
    metrics.events.labels("comment-added").inc(3)
    web = WebServer(HttpConfig().listen, 0, metrics, lambda: (state["ok"], {"events": 3}))
    web.start()
    yield web, state
    web.stop()


def request(web: WebServer, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_binds_loopback_by_default(server: tuple[WebServer, dict[str, Any]]) -> None:
    web, _ = server
    assert web.server_address[0] == "127.0.0.1"


def test_metrics(server: tuple[WebServer, dict[str, Any]]) -> None:
    status, headers, body = request(server[0], "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b'driverlog_events_total{type="comment-added"} 3.0' in body
    assert b"process_resident_memory_bytes" in body and b"driverlog_build_info{version=" in body


def test_healthz_follows_health(server: tuple[WebServer, dict[str, Any]]) -> None:
    web, state = server
    status, _, body = request(web, "GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok", "events": 3}
    state["ok"] = False
    status, _, body = request(web, "GET", "/healthz")
    assert status == 503 and json.loads(body)["status"] == "unhealthy"


def test_head_has_headers_and_no_body(server: tuple[WebServer, dict[str, Any]]) -> None:
    status, headers, body = request(server[0], "HEAD", "/metrics")
    assert status == 200 and int(headers["content-length"]) > 0 and body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(server: tuple[WebServer, dict[str, Any]], method: str) -> None:
    status, headers, _ = request(server[0], method, "/metrics")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_unknown_path_is_404(server: tuple[WebServer, dict[str, Any]]) -> None:
    assert request(server[0], "GET", "/nope")[0] == 404
