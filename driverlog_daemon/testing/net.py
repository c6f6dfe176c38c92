"""Loopback networking for tests, benches and the demo: a free port, one HTTP request."""

from __future__ import annotations

import http.client
import socket


def free_port(preferred: int = 0) -> int:
    """A port free on 127.0.0.1 now: ``preferred`` when it is (0: any)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP servers do
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET",
             timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:``port``: (status, headers by lower-case name, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()
