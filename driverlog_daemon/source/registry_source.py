"""The registry read from its source URL (``[registry] url``), as DriverLog's processor read ``default-data-uri``:
``https://``, ``http://`` or ``file://``.

Asked conditionally (``If-None-Match`` / ``If-Modified-Since`` from the last answer: a 304 costs a few bytes), with
a deadline for the whole answer, a size limit, at most :data:`MAX_REDIRECTS` redirects and never from https to
http, TLS verified by the system's trust store. The last copy that passed the checks is kept beside the database
(:data:`CACHE`, its validators in :data:`META`), so that a restart with the source down starts with it and asks
conditionally. What the source last answered is :attr:`RegistrySource.last_fetch` (``/healthz``, ``/registry``).
The checks themselves and applying are the caller's, exactly as for a file (:mod:`daemon.reload`).
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from driverlog_daemon import __version__
from driverlog_daemon.config import Config, RegistryConfig

MAX_REDIRECTS = 3
CACHE, META = "registry-source.json", "registry-source.meta.json"


def kept_copy(config: Config) -> Path:
    """Where the last good answer of ``[registry] url`` is kept: beside the database (the state directory)."""
    return Path(config.database.path).expanduser().resolve().parent / CACHE


class FetchError(Exception):
    """The source did not give a registry: unreachable, an HTTP error, too slow, too large (the message says)."""


class Answer(NamedTuple):
    data: bytes | None  # None: not modified since the validators given
    etag: str | None
    last_modified: str | None


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urlsplit(req.full_url).scheme == "https" and urlsplit(newurl).scheme != "https":
            raise urllib.error.HTTPError(req.full_url, code, f"redirect from https to {newurl!r} refused", headers,
                                         fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(url: str, *, etag: str | None = None, last_modified: str | None = None, timeout: float = 30.0,
          max_bytes: int = 16 * 1024 * 1024) -> Answer:
    """One answer of the source; :class:`FetchError` when there is none."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.request.url2pathname(parts.path))
        try:
            if path.stat().st_size > max_bytes:
                raise FetchError(f"{path}: larger than max_bytes ({max_bytes})")
            return Answer(path.read_bytes(), None, None)
        except OSError as exc:
            raise FetchError(f"{path}: {exc.strerror or exc}") from None
    headers = {"User-Agent": f"driverlog-daemon/{__version__}", "Accept": "application/json, */*;q=0.1"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    opener = urllib.request.build_opener(_Redirects(), urllib.request.HTTPSHandler(
        context=ssl.create_default_context()))
    deadline = time.monotonic() + timeout
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as answer:
            length = answer.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"{url}: {length} bytes, larger than max_bytes ({max_bytes})")
            chunks, size = [], 0
            while chunk := answer.read(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{url}: larger than max_bytes ({max_bytes})")
                if time.monotonic() > deadline:
                    raise FetchError(f"{url}: not whole within {timeout:g} s")
                chunks.append(chunk)
            return Answer(b"".join(chunks), answer.headers.get("ETag"), answer.headers.get("Last-Modified"))
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return Answer(None, etag, last_modified)
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # a timeout, a reset, a malformed answer
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None


class RegistrySource:
    """The URL, its kept copy and what it last answered. Not thread-safe: one thread asks (the follower)."""

    def __init__(self, config: RegistryConfig, cache_dir: Path, *, clock: Callable[[], float] = time.time,
                 counted: Callable[[str], None] = lambda result: None) -> None:
        self.config, self.cache_dir, self.clock, self.counted = config, cache_dir, clock, counted
        self.last_fetch: dict[str, Any] | None = None
        self._meta = self._read_meta()
        self._answer: Answer | None = None  # the last answer with bytes: its validators are kept with them

    @property
    def url(self) -> str:
        return self.config.url

    def _read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.cache_dir / META).read_bytes())
            return meta if isinstance(meta, dict) and meta.get("url") == self.url else {}
        except (OSError, ValueError):
            return {}

    def cached(self) -> bytes | None:
        """The last copy that passed the checks (None: none, or one of another URL)."""
        if not self._meta:
            return None
        try:
            data = (self.cache_dir / CACHE).read_bytes()
        except OSError:
            data = b""
        if hashlib.sha256(data).hexdigest() != self._meta.get("sha256"):
            self._meta = {}  # validators without their copy: ask in full, take any answer as new
            return None
        return data

    def ask(self, *, conditional: bool = True) -> bytes | None:
        """Ask the source: its bytes when they differ from the copy kept, else None (not modified, or the same
        bytes). :class:`FetchError` when it did not answer with a registry; ``last_fetch`` says either way."""
        meta = self._meta if conditional else {}
        try:
            answer = fetch(self.url, etag=meta.get("etag"), last_modified=meta.get("last_modified"),
                           timeout=self.config.timeout_seconds, max_bytes=self.config.max_bytes)
        except FetchError as exc:
            self.failed(str(exc), "error")
            raise
        if answer.data is not None:
            self._answer = answer
        unchanged = answer.data is None or hashlib.sha256(answer.data).hexdigest() == self._meta.get("sha256")
        self.last_fetch = {"at": self.clock(), "ok": True, "error": None, "url": self.url,
                           "not_modified": answer.data is None, "changed": not unchanged}
        self.counted("unchanged" if unchanged else "new")
        return None if unchanged else answer.data

    def failed(self, error: str, result: str) -> None:
        """The source's answer was no registry (``result`` error) or failed the checks (invalid)."""
        self.last_fetch = {"at": self.clock(), "ok": False, "error": error, "url": self.url}
        self.counted(result)

    def accepted(self, data: bytes) -> None:
        """``data`` passed the checks and is applied: keep it, with the validators of the answer it came in (the
        copy kept already, when the source's last answer was another registry: an invalid one's validators would
        have it answer 304 to it)."""
        digest, answer = hashlib.sha256(data).hexdigest(), self._answer
        if answer is None or answer.data != data:
            if self._meta.get("sha256") == digest:
                return  # the copy kept, validators and all (the start fell back on it)
            answer = None
        self._meta = {"url": self.url, "sha256": digest, "etag": answer.etag if answer else None,
                      "last_modified": answer.last_modified if answer else None, "kept_at": self.clock()}
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for name, body in ((CACHE, data), (META, json.dumps(self._meta).encode())):
                tmp = self.cache_dir / f".{name}.{os.getpid()}"
                tmp.write_bytes(body)
                os.replace(tmp, self.cache_dir / name)
        except OSError:  # only a restart with the source down needs it: then the start says so
            pass
