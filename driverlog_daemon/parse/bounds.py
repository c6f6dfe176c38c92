"""What the database can hold, checked on plain values before it is asked to: integers within SQLite's 63 bits,
text that is Unicode (JSON's ``\\ud800`` escapes decode to lone surrogates, which UTF-8 cannot encode), nesting
within a limit. A value outside them makes its line malformed, with a reason: one line costs only itself."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

#: SQLite's INTEGER: anything larger raises OverflowError when bound.
MAX_INT = (1 << 63) - 1
#: Gerrit's events nest a handful of levels; a line nested past this is refused before any decoder recurses.
MAX_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


def in_range(n: int) -> bool:
    return 0 <= n <= MAX_INT


#: 9999-12-31T23:59:59Z: the last second a four-digit year (ISO 8601, Atom, CSV, Python's datetime) can write.
MAX_TIME = 253_402_300_799


def in_time_range(t: int) -> bool:
    """A Gerrit time (seconds since 1970) that every format we write can hold."""
    return 0 <= t <= MAX_TIME


def utc_text(epoch: int, fmt: str) -> str:
    """``epoch`` in UTC by ``fmt`` (``time.strftime``); total: a time outside the years 1970-9999, which the
    parser refuses but a file an earlier version wrote may hold, is written as the nearest it can be."""
    return time.strftime(fmt, time.gmtime(min(max(int(epoch), 0), MAX_TIME)))


def valid_text(s: str) -> bool:
    """Encodable as UTF-8 (no lone surrogate)."""
    return s.isascii() or _SURROGATE.search(s) is None


def deeper_than(line: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text ``line`` opens more than ``limit`` arrays or objects at once (brackets inside strings
    counted too: an over-estimate, safe for Gerrit's shallow events). Only called for a line a decoder refused."""
    depth = deepest = 0
    for byte in line.translate(None, _NOT_BRACKETS):
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return True
        else:
            depth -= 1
    return False


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def unstorable(values: Iterable[object]) -> str | None:
    """Why a row of these values cannot be bound by sqlite3 (a reason for the log), or None."""
    for value in values:
        if value is None or isinstance(value, float | bytes):
            continue
        if isinstance(value, bool | int):
            if not -MAX_INT - 1 <= value <= MAX_INT:
                return "out_of_range"
        elif isinstance(value, str):
            if not valid_text(value):
                return "invalid_unicode"
        elif isinstance(value, tuple | list):
            reason = unstorable(value)
            if reason:
                return reason
        else:
            return f"unsupported_type:{type(value).__name__}"
    return None
