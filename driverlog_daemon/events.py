"""Parse: bytes from ``gerrit stream-events`` -> typed events.

Two entry points:

* :func:`parse_line` decodes one line completely: a :class:`CommentAdded` for a ``comment-added``, an
  :class:`OtherEvent` for every other type, or a :class:`Malformed` with a reason. It never raises.
* :class:`Scanner` handles a block of complete lines the cheap way. Most lines are not comments from a
  registered CI account, so it decides that on the raw bytes, without decoding JSON: one regular-expression
  pass finds the lines that mention a CI account as a ``"username"`` (only those are decoded), another reads
  every line's ``type`` and ``eventCreatedOn`` where Gerrit writes them (``"type":"…","eventCreatedOn":N``).
  A block where that second pass does not account for every line falls back to decoding the lines it missed.

The candidate test is exact: a line is skipped only when no ``"username"`` value in it can equal a CI
account, i.e. no such value is written literally as one, and none is written with a JSON escape (values with
a backslash are always decoded). It assumes object keys are written without escapes, as every Gerrit
version and JSON library does.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from driverlog_daemon.model import Account, Approval, Change, CommentAdded

EXCERPT_BYTES = 120


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Any event but ``comment-added``: kept for its type (counted) and its time (the backfill cursor)."""

    type: str
    created_on: int | None


@dataclass(frozen=True, slots=True)
class Malformed:
    reason: str  # invalid_utf8, invalid_json, not_object, missing_field:<path>, invalid_field:<path>
    excerpt: str


Event = CommentAdded | OtherEvent


def excerpt(line: bytes) -> str:
    text = line[:EXCERPT_BYTES].decode("utf-8", "backslashreplace")
    return text + ("…" if len(line) > EXCERPT_BYTES else "")


class _Missing(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _get(obj: Mapping[str, Any], path: str, kind: type | tuple[type, ...]) -> Any:
    node: Any = obj
    walked = []
    for part in path.split("."):
        walked.append(part)
        if not isinstance(node, dict):
            raise _Missing(f"invalid_field:{'.'.join(walked[:-1])}")
        if part not in node or node[part] is None:
            raise _Missing(f"missing_field:{path}")
        node = node[part]
    if not isinstance(node, kind) or isinstance(node, bool):
        raise _Missing(f"invalid_field:{path}")
    return node


def _opt_str(obj: Any, key: str) -> str | None:
    value = obj.get(key) if type(obj) is dict else None
    return value if type(value) is str else None


def _number(obj: Mapping[str, Any], path: str) -> int:
    value = _get(obj, path, (int, str))
    try:
        number = int(value)
    except ValueError:
        raise _Missing(f"invalid_field:{path}") from None
    if number < 0:
        raise _Missing(f"invalid_field:{path}")
    return number


def _approvals(raw: Any) -> tuple[Approval, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for a in raw:
        if isinstance(a, dict) and isinstance(a.get("type"), str) and isinstance(a.get("value"), str):
            out.append(Approval(type=a["type"], value=a["value"], description=_opt_str(a, "description"),
                                old_value=_opt_str(a, "oldValue")))
    return tuple(out)


def comment_added_from(obj: Mapping[str, Any]) -> CommentAdded:
    """Build a :class:`CommentAdded` from a decoded ``comment-added`` object; raises ``_Missing``."""
    try:  # the common, well-formed case without the per-field checks below
        author, change, ps = obj["author"], obj["change"], obj["patchSet"]
        username, project, branch = author["username"], change["project"], change["branch"]
        number, ps_number, created, comment = change["number"], ps["number"], obj["eventCreatedOn"], obj["comment"]
        if (type(username) is str and type(project) is str and type(branch) is str and type(number) is int
                and type(ps_number) is int and type(created) is int and type(comment) is str
                and number >= 0 and ps_number >= 0):
            return CommentAdded(
                author=Account(username=username, name=_opt_str(author, "name"), email=_opt_str(author, "email")),
                change=Change(project=project, branch=branch, number=number, id=_opt_str(change, "id"),
                              url=_opt_str(change, "url"), status=_opt_str(change, "status")),
                patch_set=ps_number, comment=comment, created_on=created, approvals=_approvals(obj.get("approvals")),
            )
    except (KeyError, TypeError):
        pass
    return _comment_added_checked(obj)


def _comment_added_checked(obj: Mapping[str, Any]) -> CommentAdded:
    author = _get(obj, "author", dict)
    change = _get(obj, "change", dict)
    comment = obj.get("comment", "")
    if not isinstance(comment, str):
        raise _Missing("invalid_field:comment")
    return CommentAdded(
        author=Account(username=_get(obj, "author.username", str), name=_opt_str(author, "name"),
                       email=_opt_str(author, "email")),
        change=Change(
            project=_get(obj, "change.project", str),
            branch=_get(obj, "change.branch", str),
            number=_number(obj, "change.number"),
            id=_opt_str(change, "id"),
            url=_opt_str(change, "url"),
            status=_opt_str(change, "status"),
        ),
        patch_set=_number(obj, "patchSet.number"),
        comment=comment,
        created_on=_get(obj, "eventCreatedOn", int),
        approvals=_approvals(obj.get("approvals")),
    )


def parse_line(line: bytes) -> Event | Malformed:
    """Decode one line completely. Never raises: bad input comes back as :class:`Malformed`."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed("invalid_utf8", excerpt(line))
    try:
        obj = json.loads(text)
    except ValueError:
        return Malformed("invalid_json", excerpt(line))
    if not isinstance(obj, dict):
        return Malformed("not_object", excerpt(line))
    kind = obj.get("type")
    if not isinstance(kind, str):
        return Malformed("missing_field:type" if kind is None else "invalid_field:type", excerpt(line))
    if kind == "comment-added":
        try:
            return comment_added_from(obj)
        except _Missing as missing:
            return Malformed(missing.reason, excerpt(line))
    created = obj.get("eventCreatedOn")
    return OtherEvent(kind, created if isinstance(created, int) and not isinstance(created, bool) else None)


# ------------------------------------------------------------------------------------------------ scanner

_TYPE_TIME = re.compile(rb'"type":"([^"\\]+)","eventCreatedOn":(\d+)')
_first, _second = itemgetter(0), itemgetter(1)
_COMMENT_ADDED = b'"type":"comment-added","eventCreatedOn":'


@dataclass(slots=True)
class ScanResult:
    """What one block of lines held."""

    lines: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    newest_event_time: int | None = None
    comments: list[CommentAdded] = field(default_factory=list)  # comment-added events by CI accounts
    malformed: list[Malformed] = field(default_factory=list)
    dropped_output: int = 0  # how many {"type":"dropped-output"} lines (Gerrit discarded events before them)

    def note_time(self, t: int | None) -> None:
        if t is not None and (self.newest_event_time is None or t > self.newest_event_time):
            self.newest_event_time = t


class Scanner:
    """Classifies blocks of complete lines against a fixed set of CI accounts (rebuild it on reload)."""

    def __init__(self, ci_accounts: Iterable[str]) -> None:
        self.ci_accounts = frozenset(ci_accounts)
        names = sorted((re.escape(a.encode("utf-8")) for a in self.ci_accounts), key=len, reverse=True)
        # A username value equal to a CI account written literally, or any username value with an escape.
        alternatives = [b"[^\"\\\\]*\\\\"]
        if names:
            alternatives.insert(0, b"(?:" + b"|".join(names) + b')"')
        self._candidate = re.compile(b'"username"\\s*:\\s*"(?:' + b"|".join(alternatives) + b")")

    def scan(self, block: bytes, start: int = 0, end: int | None = None) -> ScanResult:
        """Classify ``block[start:end]``: complete lines, each ending in a newline (a last one without counts).

        Fast path, when every line carries Gerrit's ``"type":"…","eventCreatedOn":N``: types and times come
        from one regex pass, and only ``comment-added`` lines are searched for a CI account's username.
        """
        result = ScanResult()
        end = len(block) if end is None else end
        if end <= start:
            return result
        lines = block.count(b"\n", start, end) + (0 if block[end - 1] == 10 else 1)
        pairs = _TYPE_TIME.findall(block, start, end)
        if len(pairs) == lines:
            result.lines = lines
            for kind, n in Counter(map(_first, pairs)).items():
                result.by_type[kind.decode("ascii", "replace")] = n
            result.note_time(max(map(int, map(_second, pairs))))
            if result.by_type.get("comment-added"):
                self._decode_comment_lines(block, start, end, result)
        else:
            part = block[start:end]
            self._scan_slowly(part, result)
            self._decode_candidates(part, result)
        result.dropped_output = result.by_type.get("dropped-output", 0)
        return result

    def _decode_comment_lines(self, block: bytes, start: int, end: int, result: ScanResult) -> None:
        """Fast path: each line's type is known, so only comment-added lines can hold a CI comment."""
        find, rfind, candidate = block.find, block.rfind, self._candidate.search
        pos = find(_COMMENT_ADDED, start, end)
        while pos >= 0:
            line_start = rfind(b"\n", start, pos) + 1 or start
            line_end = find(b"\n", pos, end)
            if line_end < 0:
                line_end = end
            if candidate(block, line_start, line_end):
                line = block[line_start:line_end]
                self._account(parse_line(line), result, count_type=False, uncount=True, line=line)
            pos = find(_COMMENT_ADDED, line_end, end)

    def _scan_slowly(self, block: bytes, result: ScanResult) -> None:
        """Per line: the cheap regex where it fits, a full decode where it does not (blank lines are skipped)."""
        for line in block.splitlines():
            if not line.strip():
                continue
            result.lines += 1
            match = _TYPE_TIME.search(line)
            if match is not None:
                result.by_type[match.group(1).decode("ascii", "replace")] += 1
                result.note_time(int(match.group(2)))
                continue
            if self._candidate.search(line):
                continue  # decoded (and counted) with the candidates
            self._account(parse_line(line), result, count_type=True)

    def _decode_candidates(self, block: bytes, result: ScanResult) -> None:
        last_start = -1
        for match in self._candidate.finditer(block):
            start = block.rfind(b"\n", 0, match.start()) + 1
            if start == last_start:
                continue  # several usernames on one line
            last_start = start
            end = block.find(b"\n", match.end())
            line = block[start:] if end < 0 else block[start:end]
            # The slow pass counted the lines its regex read; it left the others to us.
            counted = _TYPE_TIME.search(line) is not None
            self._account(parse_line(line), result, count_type=not counted, uncount=counted, line=line)

    def _account(self, event: Event | Malformed, result: ScanResult, *, count_type: bool,
                 uncount: bool = False, line: bytes = b"") -> None:
        if isinstance(event, Malformed):
            result.malformed.append(event)
            if uncount:  # counted by type from the raw bytes, but it is not a valid event after all
                m = _TYPE_TIME.search(line)
                if m is not None:
                    result.by_type[m.group(1).decode("ascii", "replace")] -= 1
            return
        if isinstance(event, CommentAdded):
            if count_type:
                result.by_type["comment-added"] += 1
            result.note_time(event.created_on)
            if event.author.username in self.ci_accounts:
                result.comments.append(event)
            return
        if count_type:
            result.by_type[event.type] += 1
        result.note_time(event.created_on)
