"""The cheap pre-check: a block of complete lines -> :class:`Findings`, decoding only the lines that matter.

Most lines are not comments from a registered CI account, so the scanner decides that on the raw bytes, without
decoding JSON. Gerrit writes an event's own type and time last (``…,"type":"X","eventCreatedOn":N}``), so each
line's type and time are read from its tail. Then:

* a ``comment-added`` is decoded only when it names a CI account as a ``"username"`` (literally, or with a JSON
  escape), by a typed decoder of just the fields of a :class:`CommentAdded` (a line of another shape is decoded in
  full, with the same result);
* a change-state event (``patchset-created``, ``change-merged``, ``change-abandoned``, ``change-restored``) is read
  by a typed decoder of the few fields a :class:`ChangeFact` needs, and kept when its change is of a review
  project (a line that decoder cannot read is decoded in full when it names a review project as a ``"project"``);
* any line that does not end the Gerrit way (another JSON layout, garbage) is decoded in full; blank lines are
  skipped.

The check is exact, never dropping a line that would match, for any JSON whose object keys are written without
escapes (every Gerrit version and JSON library): a value with a backslash is always decoded. A property test holds
it against a direct implementation of the rules (docs/matching.md).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from driverlog_daemon.model import CHANGE_STATE_EVENTS, Approval, CommentAdded, KeptComment, Verification
from driverlog_daemon.parse.changes import ChangeRows
from driverlog_daemon.parse.events import (
    ChangeEvent,
    Malformed,
    common_comment,
    fields,
    parse_line,
    state_fact,
    str_or_none,
)

# Gerrit writes the event's own type and time last: `…,"type":"comment-added","eventCreatedOn":1718901234}`.
_TYPE = b'"type":"'
# (At most 18 digits: within SQLite's 63 bits; a longer time is decoded in full, and refused with its reason.)
_TAIL = re.compile(rb'"type":"([^"\\]+)","eventCreatedOn":(\d{1,18})\}\s*$')
_COMMENT_ADDED = b"comment-added"
_STATE_KINDS = frozenset(k.encode() for k in CHANGE_STATE_EVENTS)


def _value_candidate(key: bytes, values: Iterable[str]) -> re.Pattern[bytes]:
    """``"key":"v"`` for one of ``values`` written literally, or any ``"key"`` value with a JSON escape."""
    names = sorted((re.escape(v.encode("utf-8")) for v in values), key=len, reverse=True)
    alternatives = [b"[^\"\\\\]*\\\\"]
    if names:
        alternatives.insert(0, b"(?:" + b"|".join(names) + b')"')
    return re.compile(b'"' + key + b'"\\s*:\\s*"(?:' + b"|".join(alternatives) + b")")


class Findings:
    """What one block of lines (or one batch of backfilled messages) yielded: the scanner fills the counts, the
    CI comments and the change facts; :func:`match.match_findings` turns the comments into verifications.

    Picklable without its comments (replay's workers send findings to the parent).
    """

    __slots__ = ("by_type", "changes", "ci_comments", "comments", "followed_merges", "kept", "lines", "malformed",
                 "newest_event_time", "unmatched", "verifications")

    def __init__(self) -> None:
        self.lines = 0
        self.by_type: Counter[str] = Counter()
        self.newest_event_time: int | None = None
        self.malformed: list[Malformed] = []
        self.comments: list[CommentAdded] = []  # comment-added events by CI accounts, until matched
        self.changes = ChangeRows()  # facts of the review projects' changes, merged by change
        self.ci_comments: Counter[str] = Counter()  # by CI account
        self.unmatched: Counter[str] = Counter()  # CI comments that matched no pattern, by account
        self.verifications: list[Verification] = []
        self.kept: list[KeptComment] = []  # every CI comment, as ci_comments keeps it
        self.followed_merges = 0  # changes merged in a followed project (the registry's own, [registry] follow)

    @property
    def dropped_output(self) -> int:
        """How many ``{"type":"dropped-output"}`` lines (Gerrit discarded events before them)."""
        return self.by_type.get("dropped-output", 0)

    def merge(self, other: Findings) -> None:
        """Add what another (matched) block yielded: the isolating path puts a block together again line by line."""
        self.lines += other.lines
        self.by_type.update(other.by_type)
        self.note_time(other.newest_event_time)
        self.malformed.extend(other.malformed)
        self.changes.merge(other.changes)
        self.ci_comments.update(other.ci_comments)
        self.unmatched.update(other.unmatched)
        self.verifications.extend(other.verifications)
        self.kept.extend(other.kept)
        self.followed_merges += other.followed_merges

    def note_time(self, t: int | None) -> None:
        if t is not None and (self.newest_event_time is None or t > self.newest_event_time):
            self.newest_event_time = t

    # Named tuples pickle as a call of their class each, plain tuples in C: verifications cross processes as
    # plain tuples and become named tuples again in C (the change rows are plain tuples already).

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.lines, self.by_type, self.malformed, self.ci_comments, self.unmatched,
                [tuple(v) for v in self.verifications], self.changes, self.newest_event_time,
                [tuple(k) for k in self.kept], self.followed_merges)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.lines, self.by_type, self.malformed, self.ci_comments, self.unmatched, verifications, self.changes,
         self.newest_event_time, kept, self.followed_merges) = state
        self.comments = []
        self.verifications = [_as(Verification, v) for v in verifications]
        self.kept = [_as(KeptComment, k) for k in kept]


_as = tuple.__new__  # _as(NamedTupleClass, plain_tuple): the named tuple, made in C


class Scanner:
    """Classifies blocks of complete lines against a fixed set of CI accounts (rebuild it on reload)."""

    def __init__(self, ci_accounts: Iterable[str], review_projects: Iterable[str] = (),
                 followed: Iterable[str] = ()) -> None:
        self.ci_accounts = frozenset(ci_accounts)
        self.review_projects = frozenset(review_projects)
        self.followed = frozenset(followed)  # projects whose merges are counted (the registry's repository)

    # The searches are compiled when first used: a start-up with nothing to scan compiles none.

    def warm_up(self) -> None:
        """Compile the searches and load the decoders now (a live daemon's first event should not wait)."""
        _ = self._candidate, self._project, fields()

    @functools.cached_property
    def _candidate(self) -> re.Pattern[bytes]:
        """A username value equal to a CI account written literally, or any username value with an escape."""
        return _value_candidate(b"username", self.ci_accounts)

    @functools.cached_property
    def _project(self) -> re.Pattern[bytes]:
        """Likewise a project value equal to a review project: the change-state events worth decoding."""
        return _value_candidate(b"project", self.review_projects | self.followed)

    def scan(self, block: bytes, start: int = 0, end: int | None = None) -> Findings:
        """Classify the lines of ``block[start:end]`` (each ends in a newline; a last one without counts too),
        by the rules in this module's description."""
        result = Findings()
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

    def _read_comment(self, line: bytes, result: Findings) -> None:
        """A ``comment-added`` that names a CI account: read with a typed decoder, else decoded in full."""
        try:
            ev = fields().read_comment_event(line)
            author, change = ev.author, ev.change
            event = common_comment(
                author.username, author.name, author.email, change.project, change.branch, change.number, change.id,
                change.url, change.status, ev.patchSet.number, ev.eventCreatedOn, ev.comment,
                () if ev.approvals is None else tuple(
                    Approval(a.type, a.value, str_or_none(a.description), str_or_none(a.oldValue))
                    for a in ev.approvals if type(a.type) is str and type(a.value) is str))
        except Exception:  # not the shape the typed decoder reads (or not JSON): the whole line decides
            event = None
        if event is None:
            self._decode(line, result, counted=True)
            return
        result.note_time(event.created_on)
        if event.author.username in self.ci_accounts:
            result.comments.append(event)

    def _read_state(self, kind: bytes, line: bytes, result: Findings) -> None:
        """A change-state event: its fact when its change is of a review project, read with a typed decoder."""
        try:
            state = fields().read_state_event(line)
            project = state.change.project
        except Exception:  # not what the typed decoder reads: the line-by-line rule, on its bytes
            if self._project.search(line):
                self._decode(line, result, counted=True)
            return
        if kind == b"change-merged" and type(project) is str and project in self.followed:
            result.followed_merges += 1
        if type(project) is not str or project not in self.review_projects:
            return
        fact = state_fact(kind.decode(), state.change.number, project, state.change.branch, state.change.status,
                           state.eventCreatedOn, None if state.patchSet is None else state.patchSet.number)
        if fact is None:  # not the common well-formed shape: decode it all for the exact reason
            self._decode(line, result, counted=True)
        else:
            result.changes.add_one(fact)

    def _decode(self, line: bytes, result: Findings, *, counted: bool) -> None:
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
        elif isinstance(event, ChangeEvent):
            if event.type == "change-merged" and event.fact.project in self.followed:
                result.followed_merges += 1
            if event.fact.project in self.review_projects:
                result.changes.add_one(event.fact)


