"""What the web tier sends: a response, its JSON and text forms, and how it goes out (security headers, gzip, strong
validators per representation, 304)."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

StartResponse = Callable[..., Any]
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
GZIP_MIN_BYTES = 1024


@dataclass(slots=True)
class Response:
    status: str
    content_type: str
    body: bytes
    etag: str = ""
    gzipped: bytes | None = None
    cache: str = "no-store"  # Cache-Control
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class StreamedResponse:
    """A body too large to hold (an export): sent as it is made, never cached, no validator."""

    content_type: str
    chunks: Iterator[bytes]
    filename: str = ""
    deadline_seconds: float | None = None  # from the request's start, in all (the server's socket enforces it)

    def send(self, environ: dict[str, Any], start_response: StartResponse, head: bool) -> Iterable[bytes]:
        extend = getattr(environ.get("gunicorn.socket"), "extend_deadline", None)
        if self.deadline_seconds is not None and extend is not None:
            extend(self.deadline_seconds)
        headers = [("Content-Type", self.content_type), ("X-Content-Type-Options", "nosniff"),
                   ("Content-Security-Policy", CSP), ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store")]
        if self.filename:
            headers.append(("Content-Disposition", f'attachment; filename="{self.filename}"'))
        start_response("200 OK", headers)
        if head:
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()
            return [b""]
        return self.chunks


class Held:
    """Chunks that hold a resource until they end, fail or are closed (whichever first; a generator closed
    before it started never runs its own ``finally``)."""

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None]) -> None:
        self.chunks, self._release = chunks, release
        self._held = True

    def __iter__(self) -> Held:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self.chunks)
        except BaseException:
            self.release()
            raise

    def close(self) -> None:
        try:
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()
        finally:
            self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._release()


def response(status: str, content_type: str, body: bytes) -> Response:
    return Response(status, content_type, body, '"' + hashlib.sha256(body).hexdigest()[:24] + '"')


def json_response(obj: Any, status: str = "200 OK") -> Response:
    """JSON with ``<``, ``>`` and ``&`` escaped: the same values, inert even if pasted into HTML."""
    text = json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026")
    return response(status, "application/json", text.encode() + b"\n")


def text_response(status: str, text: str) -> Response:
    return response(status, "text/plain; charset=utf-8", text.encode() + b"\n")


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (RFC 9110 12.5.3): named, or ``*``, with a q-value
    above 0; ``gzip;q=0`` refuses it, whatever ``*`` says."""
    weights: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[coding.strip()] = q
    weight = weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0)))
    return weight > 0


def send(environ: dict[str, Any], start_response: StartResponse, r: Response, head: bool) -> Iterable[bytes]:
    """Answer ``r``: the security headers, gzip for clients that take it (its own strong ETag), 304 for a
    validator that matches a 200's (an error is never "not modified")."""
    headers = [("Content-Type", r.content_type), ("X-Content-Type-Options", "nosniff"),
               ("Content-Security-Policy", CSP), ("Referrer-Policy", "no-referrer"), *r.headers,
               ("Cache-Control", r.cache)]
    body, etag = r.body, r.etag
    gzipped = len(body) >= GZIP_MIN_BYTES and accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", ""))
    if gzipped:
        if r.gzipped is None:
            r.gzipped = gzip.compress(body, 6)
        body = r.gzipped
        etag = etag and etag[:-1] + '-gzip"'  # a strong validator names one representation
    if etag:
        headers += [("ETag", etag), ("Vary", "Accept-Encoding")]
        if r.status.startswith("200") and etag in [t.strip() for t in environ.get("HTTP_IF_NONE_MATCH", "").split(",")]:
            start_response("304 Not Modified", headers[1:])
            return [b""]
    if gzipped:
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    start_response(r.status, headers)
    return [b""] if head else [body]
