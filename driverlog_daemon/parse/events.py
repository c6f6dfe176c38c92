"""Parse: one line of ``gerrit stream-events`` (or a ``gerrit query`` row's message) -> a typed event.

:func:`parse_line` decodes one line completely: a :class:`CommentAdded` for a ``comment-added``, a
:class:`ChangeEvent` for a change-state event, an :class:`OtherEvent` for every other type, or a
:class:`Malformed` with a reason. It never raises. Whole lines are decoded by msgspec first (:mod:`event_fields`);
what it refuses, ``json.loads`` judges, so a malformed line gets the same reason either way. The cheap way through
a block of lines, deciding on raw bytes which lines need decoding at all, is :mod:`scanner`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from types import ModuleType
from typing import Any, NamedTuple

from driverlog_daemon.model import CHANGE_STATE_EVENTS, Account, Approval, Change, ChangeFact, CommentAdded
from driverlog_daemon.parse.bounds import deeper_than, in_range, in_time_range, valid_text

EXCERPT_BYTES = 120


class OtherEvent(NamedTuple):
    """Any event but ``comment-added``: kept for its type (counted) and its time (the backfill cursor)."""

    type: str
    created_on: int | None


class Malformed(NamedTuple):
    reason: str  # invalid_utf8, invalid_json, too_deep, not_object, missing_field:<path>, invalid_field:<path>,
    #              out_of_range:<path>, invalid_unicode:<path>
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
    if type(node) is int and not (in_time_range(node) if path == "eventCreatedOn" else in_range(node)):
        raise _Missing(f"out_of_range:{path}")
    if type(node) is str and not valid_text(node):
        raise _Missing(f"invalid_unicode:{path}")
    return node


def str_or_none(value: Any) -> str | None:
    return value if type(value) is str else None


def _opt_str(obj: Any, key: str, path: str = "") -> str | None:
    value = obj.get(key) if type(obj) is dict else None
    if type(value) is not str:
        return None
    if not valid_text(value):
        raise _Missing(f"invalid_unicode:{path or key}")
    return value


def _number(obj: Mapping[str, Any], path: str) -> int:
    value = _get(obj, path, (int, str))
    try:
        number = int(value)
    except ValueError:
        raise _Missing(f"invalid_field:{path}") from None
    if number < 0:
        raise _Missing(f"invalid_field:{path}")
    if not in_range(number):
        raise _Missing(f"out_of_range:{path}")
    return number


def _approvals(raw: Any) -> tuple[Approval, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for a in raw:
        if isinstance(a, dict) and isinstance(a.get("type"), str) and isinstance(a.get("value"), str):
            out.append(Approval(type=a["type"], value=a["value"], description=_opt_str(a, "description"),
                                old_value=_opt_str(a, "oldValue")))
    if not _valid_approvals(out):
        raise _Missing("invalid_unicode:approvals")
    return tuple(out)


def _valid_approvals(approvals: Iterable[Approval]) -> bool:
    return all(valid_text(x) for a in approvals for x in a if x is not None)


def _valid_optional(*values: Any) -> bool:
    return all(type(v) is not str or valid_text(v) for v in values)


def common_comment(username: Any, name: Any, email: Any, project: Any, branch: Any, number: Any, change_id: Any,
                    url: Any, status: Any, patch_set: Any, created: Any, comment: Any,
                    approvals: tuple[Approval, ...]) -> CommentAdded | None:
    """The :class:`CommentAdded` of a ``comment-added`` of the common well-formed shape, from its fields (however
    they were decoded), else None: the caller decodes the line in full for the exact reason."""
    if (type(username) is str and type(project) is str and type(branch) is str and type(number) is int
            and type(patch_set) is int and type(created) is int and type(comment) is str
            and in_range(number) and in_range(patch_set) and in_time_range(created)
            and _valid_optional(username, project, branch, comment, name, email, change_id, url, status)
            and _valid_approvals(approvals)):
        return CommentAdded(
            author=Account(username, str_or_none(name), str_or_none(email)),
            change=Change(project, branch, number, str_or_none(change_id), str_or_none(url), str_or_none(status)),
            patch_set=patch_set, comment=comment, created_on=created, approvals=approvals)
    return None


def comment_added_from(obj: Mapping[str, Any]) -> CommentAdded:
    """Build a :class:`CommentAdded` from a decoded ``comment-added`` object; raises ``_Missing``."""
    try:  # the common, well-formed case without the per-field checks below
        author, change = obj["author"], obj["change"]
        event = common_comment(
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
    if not valid_text(comment):
        raise _Missing("invalid_unicode:comment")
    return CommentAdded(
        author=Account(username=_get(obj, "author.username", str), name=_opt_str(author, "name", "author.name"),
                       email=_opt_str(author, "email", "author.email")),
        change=Change(
            project=_get(obj, "change.project", str),
            branch=_get(obj, "change.branch", str),
            number=_number(obj, "change.number"),
            id=_opt_str(change, "id", "change.id"),
            url=_opt_str(change, "url", "change.url"),
            status=_opt_str(change, "status", "change.status"),
        ),
        patch_set=_number(obj, "patchSet.number"),
        comment=comment,
        created_on=_get(obj, "eventCreatedOn", int),
        approvals=_approvals(obj.get("approvals")),
    )


_STATUS_BY_EVENT = {"change-merged": "MERGED", "change-abandoned": "ABANDONED", "change-restored": "NEW"}


def state_fact(kind: str, number: Any, project: Any, branch: Any, status: Any, created: Any,
                patch_set: Any) -> ChangeFact | None:
    """The :class:`ChangeFact` of a change-state event of the common well-formed shape, else None."""
    if (type(number) is int and type(patch_set) is int and type(created) is int and type(project) is str
            and type(branch) is str and in_range(number) and in_range(patch_set) and in_time_range(created)
            and _valid_optional(project, branch, status)):
        merged = kind == "change-merged"
        status = _STATUS_BY_EVENT.get(kind) or status
        return ChangeFact(number, project, branch, status if type(status) is str else None, created, patch_set,
                          patch_set if merged else None, created if merged else None)
    return None


def change_event_from(obj: Mapping[str, Any], kind: str) -> ChangeEvent:
    """Build a :class:`ChangeEvent` from a decoded change-state event; raises ``_Missing``."""
    try:  # the common, well-formed case without the per-field checks below
        change, ps = obj["change"], obj["patchSet"]
        fact = state_fact(kind, change["number"], change["project"], change["branch"], change.get("status"),
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
        branch=_get(obj, "change.branch", str),
        status=_STATUS_BY_EVENT.get(kind) or _opt_str(change, "status", "change.status"),
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
        obj = fields().read_any(line)  # strict JSON, faster than json.loads
    except Exception:  # whatever msgspec refuses, json decides (and names the reason)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return Malformed("invalid_utf8", excerpt(line))
        if deeper_than(line):  # before json recurses into it
            return Malformed("too_deep", excerpt(line))
        try:
            obj = json.loads(text)
        except ValueError:
            return Malformed("invalid_json", excerpt(line))
        except RecursionError:  # deep for this thread's stack, though within the limit
            return Malformed("too_deep", excerpt(line))
    if not isinstance(obj, dict):
        return Malformed("not_object", excerpt(line))
    kind = obj.get("type")
    if not isinstance(kind, str):
        return Malformed("missing_field:type" if kind is None else "invalid_field:type", excerpt(line))
    if not valid_text(kind):
        return Malformed("invalid_unicode:type", excerpt(line))
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
    if type(created) is int and not in_time_range(created):
        return Malformed("out_of_range:eventCreatedOn", excerpt(line))
    return OtherEvent(kind, created if type(created) is int else None)


@cache
def fields() -> ModuleType:
    """:mod:`driverlog_daemon.parse.fields` (msgspec's decoders), imported on first use."""
    from driverlog_daemon.parse import fields as decoders

    return decoders
