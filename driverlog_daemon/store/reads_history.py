"""The reads of history imports (beside :mod:`reads`, on the caller's connection): the work left, the progress the
page, ``/healthz``, the metrics and STATUS show, the imports of the ingestion ledger, and the marks the search's
stop rule compares with.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any, NamedTuple

from driverlog_daemon.model import Work


class PendingImport(NamedTuple):
    id: int
    kind: str  # first, registry
    since: int
    search_floor: int | None
    work: tuple[Work, ...]  # the rows not done, in a stable order


def pending(conn: sqlite3.Connection) -> list[PendingImport]:
    """The unfinished imports, oldest first, with their work still to do."""
    imports = conn.execute("SELECT id, kind, since, search_floor FROM imports WHERE finished_at IS NULL "
                           "ORDER BY id").fetchall()
    out = []
    for import_id, kind, since, floor in imports:
        work = tuple(Work(k, n, tuple(json.loads(d)), phase, position, reread) for k, n, d, phase, position, reread in
                     conn.execute("SELECT kind, name, drivers, phase, position, reread_since FROM import_work "
                                  "WHERE import_id = ? AND phase != 'done' ORDER BY kind, name", (import_id,)))
        out.append(PendingImport(import_id, kind, since, floor, work))
    return out


class Progress(NamedTuple):
    done: int  # bindings whose import is done, over the unfinished imports
    total: int
    imports: int  # unfinished imports

    def text(self) -> str | None:
        """``importing history: 12 of 147 bindings`` while an import runs, else None."""
        return f"importing history: {self.done} of {self.total} bindings" if self.imports else None


def progress(conn: sqlite3.Connection) -> Progress:
    done, total, n = conn.execute(
        "SELECT coalesce(sum(bindings_done), 0), coalesce(sum(bindings), 0), count(*) FROM imports "
        "WHERE finished_at IS NULL").fetchone()
    return Progress(int(done), int(total), int(n))


def mark_times(conn: sqlite3.Connection, driver_ids: Iterable[int]) -> dict[tuple[int, str], int]:
    """(driver id, release) -> the comment time of its mark, for these drivers."""
    ids = sorted(set(driver_ids))
    if not ids:
        return {}
    return {(d, r): int(t) for d, r, t in conn.execute(
        f"SELECT driver_id, release, comment_time FROM driver_marks WHERE driver_id IN ({', '.join('?' * len(ids))})",
        ids)}


_IMPORT_FIELDS = ("id", "kind", "registry_version", "since", "search_floor", "started_at", "finished_at", "bindings",
                  "bindings_done", "queries", "commands", "changes_read", "ci_messages", "recovered",
                  "already_present", "rejudged", "throttled_seconds", "attempts", "last_error")


def imports(conn: sqlite3.Connection, *, limit: int = 20) -> list[dict[str, Any]]:
    """The history imports, newest first, as the ingestion ledger shows them."""
    return [dict(zip(_IMPORT_FIELDS, row, strict=True)) for row in conn.execute(
        f"SELECT {', '.join(_IMPORT_FIELDS)} FROM imports ORDER BY id DESC LIMIT ?", (limit,))]


def first_import_since(conn: sqlite3.Connection) -> int | None:
    """The window start of the first start's import once every account's window is read (the file is then complete
    since), else None."""
    row = conn.execute(
        """SELECT i.since FROM imports i WHERE i.kind = 'first' AND NOT EXISTS (
               SELECT 1 FROM import_work w WHERE w.import_id = i.id AND w.kind = 'account' AND w.phase = 'window')
           ORDER BY i.id LIMIT 1""").fetchone()
    return None if row is None else int(row[0])
