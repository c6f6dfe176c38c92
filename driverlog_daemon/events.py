"""Parse: bytes from ``gerrit stream-events`` -> typed events.

Two entry points:

* :func:`parse_line` decodes one line completely: a :class:`CommentAdded` for a ``comment-added``, an
  :class:`OtherEvent` for every other type, or a :class:`Malformed` with a reason. It never raises.
* :class:`Scanner` handles a block of complete lines the cheap way. Most lines are not comments from a
  registered CI account, so it decides that on the raw bytes, without decoding JSON: Gerrit writes an event's
  own type and time last (``…,"type":"X","eventCreatedOn":N}``), so each line's type and time are read from its
  tail; only a ``comment-added`` line that mentions a CI account as a ``"username"`` is decoded, by a typed
  decoder of just the fields of a :class:`CommentAdded` (a line of another shape is decoded in full, and the
  result is the same: a property test compares the two). A line that does not end the Gerrit way (another JSON
  layout, garbage) is decoded in full.

The candidate test is exact: a ``comment-added`` line is skipped only when no ``"username"`` value in it can
equal a CI account, i.e. no such value is written literally as one and none is written with a JSON escape
(values with a backslash are always decoded). It assumes object keys are written without escapes, as every
Gerrit version and JSON library does. The change-state events (``patchset-created``, ``change-merged``,
``change-abandoned``, ``change-restored``) are read by a typed decoder (msgspec, :mod:`event_fields`) that reads
only ``change``'s number, project, branch and status, the patch set number and the time, and skips the rest in C;
a fact is kept when ``change.project`` is one of the registry's review projects. A state line that decoder
cannot read falls back to the rule above, with a review project as a ``"project"`` value. Whole lines are
decoded by msgspec first; what it refuses, ``json.loads`` judges, so a malformed line gets the same reason.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache
from types import ModuleType
from typing import Any, NamedTuple

from driverlog_daemon.model import CHANGE_STATE_EVENTS, Account, Approval, Change, ChangeFact, CommentAdded

EXCERPT_BYTES = 120


class OtherEvent(NamedTuple):
    """Any event but ``comment-added``: kept for its type (counted) and its time (the backfill cursor)."""

    type: str
    created_on: int | None


class Malformed(NamedTuple):
    reason: str  # invalid_utf8, invalid_json, not_object, missing_field:<path>, invalid_field:<path>
    excerpt: str


class ChangeEvent(NamedTuple):
    """A ``patchset-created``, ``change-merged``, ``change-abandoned`` or ``change-restored``: a change's state."""

    type: str
    created_on: int
    fact: ChangeFact


Event = CommentAdded | ChangeEvent | OtherEvent


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


def _str_or_none(value: Any) -> str | None:
    return value if type(value) is str else None


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


def _common_comment(username: Any, name: Any, email: Any, project: Any, branch: Any, number: Any, change_id: Any,
                    url: Any, status: Any, patch_set: Any, created: Any, comment: Any,
                    approvals: tuple[Approval, ...]) -> CommentAdded | None:
    """The :class:`CommentAdded` of a ``comment-added`` of the common well-formed shape, from its fields (however
    they were decoded), else None: the caller decodes the line in full for the exact reason."""
    if (type(username) is str and type(project) is str and type(branch) is str and type(number) is int
            and type(patch_set) is int and type(created) is int and type(comment) is str
            and number >= 0 and patch_set >= 0):
        return CommentAdded(
            author=Account(username, _str_or_none(name), _str_or_none(email)),
            change=Change(project, branch, number, _str_or_none(change_id), _str_or_none(url), _str_or_none(status)),
            patch_set=patch_set, comment=comment, created_on=created, approvals=approvals)
    return None


def comment_added_from(obj: Mapping[str, Any]) -> CommentAdded:
    """Build a :class:`CommentAdded` from a decoded ``comment-added`` object; raises ``_Missing``."""
    try:  # the common, well-formed case without the per-field checks below
        author, change = obj["author"], obj["change"]
        event = _common_comment(
            author["username"], author.get("name"), author.get("email"), change["project"], change["branch"],
            change["number"], change.get("id"), change.get("url"), change.get("status"), obj["patchSet"]["number"],
            obj["eventCreatedOn"], obj["comment"], _approvals(obj.get("approvals")))
        if event is not None:
            return event
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


_STATUS_BY_EVENT = {"change-merged": "MERGED", "change-abandoned": "ABANDONED", "change-restored": "NEW"}


def _state_fact(kind: str, number: Any, project: Any, branch: Any, status: Any, created: Any,
                patch_set: Any) -> ChangeFact | None:
    """The :class:`ChangeFact` of a change-state event of the common well-formed shape, else None."""
    if (type(number) is int and type(patch_set) is int and type(created) is int and type(project) is str
            and type(branch) is str and number >= 0 and patch_set >= 0):
        merged = kind == "change-merged"
        status = _STATUS_BY_EVENT.get(kind) or status
        return ChangeFact(number, project, branch, status if type(status) is str else None, created, patch_set,
                          patch_set if merged else None, created if merged else None)
    return None


def change_event_from(obj: Mapping[str, Any], kind: str) -> ChangeEvent:
    """Build a :class:`ChangeEvent` from a decoded change-state event; raises ``_Missing``."""
    try:  # the common, well-formed case without the per-field checks below
        change, ps = obj["change"], obj["patchSet"]
        fact = _state_fact(kind, change["number"], change["project"], change["branch"], change.get("status"),
                           obj["eventCreatedOn"], ps["number"])
        if fact is not None:
            return ChangeEvent(kind, fact.time, fact)
    except (KeyError, TypeError, AttributeError):
        pass
    change = _get(obj, "change", dict)
    created = _get(obj, "eventCreatedOn", int)
    patch_set = _number(obj, "patchSet.number") if isinstance(obj.get("patchSet"), dict) else None
    if kind == "change-merged" and patch_set is None:
        raise _Missing("missing_field:patchSet.number")
    merged = kind == "change-merged"
    fact = ChangeFact(
        number=_number(obj, "change.number"), project=_get(obj, "change.project", str),
        branch=_get(obj, "change.branch", str), status=_STATUS_BY_EVENT.get(kind) or _opt_str(change, "status"),
        time=created, patch_set=patch_set, merged_patch_set=patch_set if merged else None,
        merged_at=created if merged else None)
    return ChangeEvent(kind, created, fact)


def comment_fact(comment: CommentAdded) -> ChangeFact:
    """What a ``comment-added`` says of its change: its status then, and that the patch set exists."""
    c = comment.change
    merged = c.status == "MERGED"
    return ChangeFact(number=c.number, project=c.project, branch=c.branch, status=c.status, time=comment.created_on,
                      patch_set=comment.patch_set, merged_patch_set=None,
                      merged_at=comment.created_on if merged else None)


def parse_line(line: bytes) -> Event | Malformed:
    """Decode one line completely. Never raises: bad input comes back as :class:`Malformed`."""
    try:
        obj = _fields().read_any(line)  # strict JSON, 3x json.loads' speed
    except Exception:  # whatever msgspec refuses, json decides (and names the reason)
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
    if kind in CHANGE_STATE_EVENTS:
        try:
            return change_event_from(obj, kind)
        except _Missing as missing:
            return Malformed(missing.reason, excerpt(line))
    created = obj.get("eventCreatedOn")
    return OtherEvent(kind, created if isinstance(created, int) and not isinstance(created, bool) else None)


# ------------------------------------------------------------------------------------------------ scanner

# Gerrit writes the event's own type and time last: `…,"type":"comment-added","eventCreatedOn":1718901234}`.
_TYPE = b'"type":"'
_TAIL = re.compile(rb'"type":"([^"\\]+)","eventCreatedOn":(\d+)\}\s*$')
_COMMENT_ADDED = b"comment-added"
_STATE_KINDS = frozenset(k.encode() for k in CHANGE_STATE_EVENTS)


def _value_candidate(key: bytes, values: Iterable[str]) -> re.Pattern[bytes]:
    """``"key":"v"`` for one of ``values`` written literally, or any ``"key"`` value with a JSON escape."""
    names = sorted((re.escape(v.encode("utf-8")) for v in values), key=len, reverse=True)
    alternatives = [b"[^\"\\\\]*\\\\"]
    if names:
        alternatives.insert(0, b"(?:" + b"|".join(names) + b')"')
    return re.compile(b'"' + key + b'"\\s*:\\s*"(?:' + b"|".join(alternatives) + b")")


class ScanResult:
    """What one block of lines held."""

    __slots__ = ("by_type", "changes", "comments", "lines", "malformed", "newest_event_time")

    def __init__(self) -> None:
        self.lines = 0
        self.by_type: Counter[str] = Counter()
        self.newest_event_time: int | None = None
        self.comments: list[CommentAdded] = []  # comment-added events by CI accounts
        self.changes: list[ChangeFact] = []  # change-state events of the review projects
        self.malformed: list[Malformed] = []

    @property
    def dropped_output(self) -> int:
        """How many ``{"type":"dropped-output"}`` lines (Gerrit discarded events before them)."""
        return self.by_type.get("dropped-output", 0)

    def note_time(self, t: int | None) -> None:
        if t is not None and (self.newest_event_time is None or t > self.newest_event_time):
            self.newest_event_time = t


class Scanner:
    """Classifies blocks of complete lines against a fixed set of CI accounts (rebuild it on reload)."""

    def __init__(self, ci_accounts: Iterable[str], review_projects: Iterable[str] = ()) -> None:
        self.ci_accounts = frozenset(ci_accounts)
        self.review_projects = frozenset(review_projects)

    # The searches are compiled when first used: a start-up with nothing to scan compiles none.

    def warm_up(self) -> None:
        """Compile the searches and load the decoders now (a live daemon's first event should not wait)."""
        _ = self._candidate, self._project, _fields()

    @functools.cached_property
    def _candidate(self) -> re.Pattern[bytes]:
        """A username value equal to a CI account written literally, or any username value with an escape."""
        return _value_candidate(b"username", self.ci_accounts)

    @functools.cached_property
    def _project(self) -> re.Pattern[bytes]:
        """Likewise a project value equal to a review project: the change-state events worth decoding."""
        return _value_candidate(b"project", self.review_projects)

    def scan(self, block: bytes, start: int = 0, end: int | None = None) -> ScanResult:
        """Classify the lines of ``block[start:end]`` (each ends in a newline; a last one without counts too).

        A line that ends the way Gerrit writes events (``"type":"X","eventCreatedOn":N}``) is counted and
        timed from those bytes. A ``comment-added`` is decoded only when it names a CI account as a
        ``"username"`` (literally, or with a JSON escape). A change-state event is read by a typed decoder that
        reads just what a change fact needs, and kept when its ``change.project`` is a review project (a line
        that decoder cannot read is decoded in full when it names a review project as a ``"project"``). Any
        other line is decoded in full. Blank lines are skipped.
        """
        result = ScanResult()
        end = len(block) if end is None else end
        find, rfind, tail = block.find, block.rfind, _TAIL.match
        names_ci = self._candidate.search
        counts: dict[bytes, int] = {}
        newest = -1
        lines = 0
        pos = start
        while pos < end:
            line_end = find(b"\n", pos, end)
            if line_end < 0:
                line_end = end
            at = rfind(_TYPE, pos, line_end)
            m = tail(block, at, line_end) if at >= 0 else None
            if m is not None:
                lines += 1
                kind, digits = m.groups()
                counts[kind] = counts.get(kind, 0) + 1
                t = int(digits)
                if t > newest:
                    newest = t
                if kind == _COMMENT_ADDED:
                    if names_ci(block, pos, at):
                        self._read_comment(block[pos:line_end], result)
                elif kind in _STATE_KINDS:
                    self._read_state(kind, block[pos:line_end], result)
            elif block[pos:line_end].strip():
                lines += 1
                self._decode(block[pos:line_end], result, counted=False)
            pos = line_end + 1
        result.lines += lines
        for kind, n in counts.items():
            result.by_type[kind.decode("utf-8", "replace")] += n
        if newest >= 0:
            result.note_time(newest)
        return result

    def _read_comment(self, line: bytes, result: ScanResult) -> None:
        """A ``comment-added`` that names a CI account: read with a typed decoder, else decoded in full."""
        try:
            ev = _fields().read_comment_event(line)
            author, change = ev.author, ev.change
            event = _common_comment(
                author.username, author.name, author.email, change.project, change.branch, change.number, change.id,
                change.url, change.status, ev.patchSet.number, ev.eventCreatedOn, ev.comment,
                () if ev.approvals is None else tuple(
                    Approval(a.type, a.value, _str_or_none(a.description), _str_or_none(a.oldValue))
                    for a in ev.approvals if type(a.type) is str and type(a.value) is str))
        except Exception:  # not the shape the typed decoder reads (or not JSON): the whole line decides
            event = None
        if event is None:
            self._decode(line, result, counted=True)
            return
        result.note_time(event.created_on)
        if event.author.username in self.ci_accounts:
            result.comments.append(event)

    def _read_state(self, kind: bytes, line: bytes, result: ScanResult) -> None:
        """A change-state event: its fact when its change is of a review project, read with a typed decoder."""
        try:
            state = _fields().read_state_event(line)
            project = state.change.project
        except Exception:  # not what the typed decoder reads: the line-by-line rule, on its bytes
            if self._project.search(line):
                self._decode(line, result, counted=True)
            return
        if type(project) is not str or project not in self.review_projects:
            return
        fact = _state_fact(kind.decode(), state.change.number, project, state.change.branch, state.change.status,
                           state.eventCreatedOn, None if state.patchSet is None else state.patchSet.number)
        if fact is None:  # not the common well-formed shape: decode it all for the exact reason
            self._decode(line, result, counted=True)
        else:
            result.changes.append(fact)

    def _decode(self, line: bytes, result: ScanResult, *, counted: bool) -> None:
        """Decode a line in full. ``counted``: its type was already counted from its bytes."""
        event = parse_line(line)
        if isinstance(event, Malformed):
            result.malformed.append(event)
            if counted:  # counted by type from the raw bytes, but it is not a valid event after all
                m = _TAIL.search(line)
                result.by_type[m.group(1).decode("utf-8", "replace") if m else "comment-added"] -= 1
            return
        if not counted:
            result.by_type["comment-added" if isinstance(event, CommentAdded) else event.type] += 1
        result.note_time(event.created_on)
        if isinstance(event, CommentAdded):
            if event.author.username in self.ci_accounts:
                result.comments.append(event)
        elif isinstance(event, ChangeEvent) and event.fact.project in self.review_projects:
            result.changes.append(event.fact)


@cache
def _fields() -> ModuleType:
    """:mod:`driverlog_daemon.event_fields` (msgspec's decoders), imported on first use."""
    from driverlog_daemon import event_fields

    return event_fields
