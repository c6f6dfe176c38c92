"""A registry served over real HTTP on 127.0.0.1, as a raw-file URL of DriverLog's repository would serve it
(``ETag``, ``Last-Modified``, 304 to a conditional request that still matches), with the faults a source has on
cue: an HTTP error, an answer that hangs, a redirect loop, a body that is not a registry."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import Any

from driverlog_daemon.testing.http import ThreadedServer

StartResponse = Callable[..., Any]


class RegistryServer:
    def __init__(self, document: bytes) -> None:
        self.document = document
        self.modified = time.time()
        self.fault: str | None = None  # "500", "hang", "redirect-loop"
        self.requests: list[dict[str, str]] = []  # each request's conditional headers, and what it was answered
        self.release = threading.Event()  # a hanging answer ends when set (or after a minute)
        self._web = ThreadedServer(self, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._web.port}/x/driverlog/raw/branch/master/etc/default_data.json"

    def publish(self, document: bytes) -> None:
        """A new registry at the same URL (a change merged upstream)."""
        self.document, self.modified = document, time.time() + 1

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.document).hexdigest()[:16] + '"'

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        seen = {"if_none_match": environ.get("HTTP_IF_NONE_MATCH", ""), "path": environ.get("PATH_INFO", "")}
        self.requests.append(seen)
        if self.fault == "500":
            seen["answer"] = "500"
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"oops\n"]
        if self.fault == "hang":
            seen["answer"] = "hang"
            self.release.wait(60)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [self.document]
        if self.fault == "redirect-loop":
            seen["answer"] = "302"
            start_response("302 Found", [("Location", self.url + "?again"), ("Content-Length", "0")])
            return [b""]
        if seen["if_none_match"] == self.etag:
            seen["answer"] = "304"
            start_response("304 Not Modified", [("ETag", self.etag)])
            return [b""]
        seen["answer"] = "200"
        start_response("200 OK", [("Content-Type", "application/json"), ("ETag", self.etag),
                                  ("Last-Modified", formatdate(self.modified, usegmt=True)),
                                  ("Content-Length", str(len(self.document)))])
        return [self.document]

    def answers(self) -> list[str]:
        return [r.get("answer", "") for r in self.requests]

    def start(self) -> RegistryServer:
        self._web.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._web.stop()
