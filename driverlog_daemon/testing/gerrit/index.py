"""The Gerrit test server's change index: the changes it knows, fed by the events it streams."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from driverlog_daemon.testing.gerrit.query import StoredChange, parse_query


class ChangeIndex:
    """The changes the server knows, fed by the events it streams; answers ``gerrit query``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.changes: dict[int, StoredChange] = {}
        #: the most rows a query answers, whatever its limit: Gerrit's queryLimit capability (None: 500, the
        #: server's default)
        self.query_limit: int | None = None

    def record(self, event: dict[str, Any], message_skew: int = 0) -> None:
        change = event.get("change")
        if not isinstance(change, dict) or "number" not in change:
            return
        number = int(change["number"])
        when = int(event.get("eventCreatedOn") or time.time())
        with self._lock:
            stored = self.changes.get(number)
            data = {k: v for k, v in change.items() if k not in ("commitMessage",)}
            data["number"] = number
            if stored is None:
                stored = self.changes[number] = StoredChange(data=data, last_updated=when)
            else:
                stored.data.update(data)
            stored.last_updated = max(stored.last_updated, when)
            ps = event.get("patchSet")
            if isinstance(ps, dict) and "number" in ps:
                stored.patch_sets.setdefault(int(ps["number"]), {**ps, "number": int(ps["number"])})
            kind = event.get("type")
            if kind == "comment-added":
                text = str(event.get("comment", ""))
                ps_number = int(ps["number"]) if isinstance(ps, dict) and "number" in ps else 1
                if not re.match(r"Patch Set \d+:", text):  # an old server's event: write the line Gerrit writes
                    text = f"Patch Set {ps_number}:{_votes(event.get('approvals'))}\n\n{text}"
                stored.messages.append({"timestamp": when + message_skew, "reviewer": event.get("author", {}),
                                        "message": text})
            elif kind == "patchset-created" and isinstance(ps, dict):
                stored.messages.append({"timestamp": when, "reviewer": event.get("uploader", {}),
                                        "message": f"Uploaded patch set {ps.get('number')}."})

    def query(self, text: str, start: int = 0) -> tuple[list[StoredChange], bool]:
        predicate, limit = parse_query(text)
        if self.query_limit is not None:
            limit = min(limit, self.query_limit)
        with self._lock:
            hits = [c for c in self.changes.values() if predicate(c)]
        hits.sort(key=lambda c: (c.last_updated, c.data["number"]), reverse=True)
        page = hits[start:start + limit]
        return page, len(hits) > start + limit


def _votes(approvals: Any) -> str:
    """The votes a review cast, as Gerrit writes them after ``Patch Set N:`` (`` Code-Review+1 Verified-1``): those
    it changed when the server says so (``oldValue``), else every non-zero one."""
    cast = [a for a in approvals or () if isinstance(a, dict)]
    if any("oldValue" in a for a in cast):
        cast = [a for a in cast if "oldValue" in a]
    votes = [f"{a.get('description') or a.get('type')}{int(a['value']):+d}" for a in cast
             if str(a.get("value", "0")).lstrip("+-").isdigit() and int(a["value"]) != 0]
    return "".join(f" {v}" for v in votes)
