"""The web tier's answer cache: whole answers kept per (path, query, state), rendered once however many ask.

State is what an answer was made from: the records (:mod:`records`), or the database's version, the registry and
the minute for the routes that read the database themselves. An answer missing from the cache is rendered by one
request while the others asking for it get the previous answer of that path and query (or wait, when there is
none); the answers made from records that were asked for lately are
remembered, so that they can be rendered again before new records are published (:meth:`App._prepare`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from driverlog_daemon.expose.web.responses import Response

CACHE_ENTRIES = 512
RECENT_ANSWERS = 8  # answers made from records that are rendered again, before requests ask, when records change

Key = tuple[Any, ...]
Asked = tuple[str, tuple[tuple[str, str], ...]]  # a path and its sorted query


class AnswerCache:
    def __init__(self, entries: int = CACHE_ENTRIES, recent: int = RECENT_ANSWERS) -> None:
        self.entries, self.recent_entries = entries, recent
        self._answers: OrderedDict[Key, Response] = OrderedDict()
        self._recent: OrderedDict[Asked, Any] = OrderedDict()
        self._latest: OrderedDict[Asked, Response] = OrderedDict()  # the newest answer of each path and query
        self._rendering: dict[Key, threading.Lock] = {}
        self._lock = threading.Lock()

    def answer(self, key: Key, render: Callable[[], Response]) -> Response:
        """The cached answer for ``key`` (``(path, query, *state)``), else ``render()``'s, kept when it is a 200.
        Concurrent requests for one missing key render it once; while it renders, the others get the previous
        answer of the same path and query when there is one (made from the state just before), rather than wait.
        """
        hit = self.lookup(key)
        if hit is not None:
            return hit
        asked: Asked = (key[0], key[1])
        with self._lock:
            rendering = self._rendering.get(key)
            previous = self._latest.get(asked) if rendering is not None else None
            if rendering is None:
                rendering = self._rendering[key] = threading.Lock()
        if previous is not None:
            return previous
        with rendering:
            hit = self.lookup(key)
            if hit is None:
                hit = render()
                if hit.status.startswith("200"):
                    self.store(key, hit)
        with self._lock:
            self._rendering.pop(key, None)
        return hit

    def lookup(self, key: Key) -> Response | None:
        with self._lock:
            hit = self._answers.get(key)
            if hit is not None:
                self._answers.move_to_end(key)
            return hit

    def store(self, key: Key, response: Response) -> None:
        with self._lock:
            self._answers[key] = response
            while len(self._answers) > self.entries:
                self._answers.popitem(last=False)
            asked: Asked = (key[0], key[1])
            self._latest[asked] = response
            self._latest.move_to_end(asked)
            while len(self._latest) > self.entries:
                self._latest.popitem(last=False)

    def asked(self, asked: Asked, how: Any) -> None:
        """Remember that ``asked`` was asked for lately, and ``how`` to answer it again."""
        with self._lock:
            self._recent[asked] = how
            self._recent.move_to_end(asked)
            while len(self._recent) > self.recent_entries:
                self._recent.popitem(last=False)

    def recent(self) -> list[tuple[Asked, Any]]:
        with self._lock:
            return list(self._recent.items())
