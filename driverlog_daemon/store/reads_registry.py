"""The registries the file has applied (``registry_versions``), newest first, each with its diff against the one
before (:mod:`registry.diff`), and when each driver's entry last changed: ``/registry``, ``/api/1.0/registry`` and
the driver page.

A registry is named by the digest of its bytes, so the diff of two of them is worked out once per process (the
documents decompressed and indexed, unchecked: they passed every check when applied) and kept, bounded, by their
digests — whichever file, whichever version ids.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections import OrderedDict
from typing import Any

from driverlog_daemon.registry import diff
from driverlog_daemon.registry.load import Registry, registry_from_valid_bytes

_COLUMNS = "id, sha256, source, applied_at, drivers, ci_bindings, ci_accounts"
_KEPT = 1024  # diffs of version pairs kept per process
_diffs: OrderedDict[tuple[str | None, str], diff.RegistryDiff | None] = OrderedDict()
_lock = threading.Lock()


def _registry(conn: sqlite3.Connection, version: int) -> Registry | None:
    row = conn.execute("SELECT document FROM registry_versions WHERE id = ?", (version,)).fetchone()
    try:
        return registry_from_valid_bytes(zlib.decompress(row[0]), f"<registry version {version}>")
    except (ValueError, KeyError, TypeError, zlib.error):  # written by another version of the daemon
        return None


def _diff(conn: sqlite3.Connection, previous: tuple[int, str] | None,
          version: tuple[int, str]) -> diff.RegistryDiff | None:
    """Version ``version`` (id, sha256) against ``previous`` (None: the first; every driver added); None when
    unreadable."""
    key = (previous[1] if previous is not None else None, version[1])
    with _lock:
        if key in _diffs:
            _diffs.move_to_end(key)
            return _diffs[key]
    new = _registry(conn, version[0])
    old = _registry(conn, previous[0]) if previous is not None else None
    found = None if new is None or (previous is not None and old is None) else diff.diff(old, new)
    with _lock:
        _diffs[key] = found
        while len(_diffs) > _KEPT:
            _diffs.popitem(last=False)
    return found


def _version(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(("id", "sha256", "source", "applied_at", "drivers", "ci_bindings", "ci_accounts"), row,
                    strict=True))


def versions(conn: sqlite3.Connection, *, limit: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """(the registry applied last, the ``limit`` newest versions with their diffs, how many versions in all)."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM registry_versions ORDER BY id DESC LIMIT ?", (limit + 1,)).fetchall()
    total = int(conn.execute("SELECT count(*) FROM registry_versions").fetchone()[0])
    out = []
    for i, row in enumerate(rows[:limit]):
        previous = (int(rows[i + 1][0]), str(rows[i + 1][1])) if i + 1 < len(rows) else None
        d = _diff(conn, previous, (int(row[0]), str(row[1])))
        out.append({**_version(row), "previous": previous[0] if previous else None,
                    "summary": diff.summary(d) if d is not None else "not readable by this version",
                    "changes": diff.as_json(d) if d is not None else None,
                    "lines": diff.lines(d) if d is not None else []})
    return (_version(rows[0]) if rows else None), out, total


def entry_changes(conn: sqlite3.Connection) -> dict[tuple[str, str, str], tuple[float, tuple[str, ...]]]:
    """Each driver of the file's registries -> when its entry last changed (was added, or a field changed) and
    how (``("added",)`` or the fields), over every version applied."""
    out: dict[tuple[str, str, str], tuple[float, tuple[str, ...]]] = {}
    previous = None
    for version, sha, applied_at in conn.execute("SELECT id, sha256, applied_at FROM registry_versions ORDER BY id"):
        d = _diff(conn, previous, (int(version), str(sha)))
        if d is not None:
            out.update((k, (float(applied_at), ("added",))) for k in d.added)
            out.update((c.key, (float(applied_at), c.fields)) for c in d.changed)
        previous = (int(version), str(sha))
    return out
