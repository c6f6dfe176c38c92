"""The few fields of an event the scanner's fast path reads, as msgspec types (imported on first use).

msgspec decodes just the fields named here and skips the rest of a line in C, which is what makes the
change-state events (a quarter of a busy stream) cheap to read (docs/performance.md has the figures). A CI's
``comment-added`` is read the same way (the fields of a ``CommentAdded``). Lines of another shape are decoded
whole by msgspec, and what it refuses by ``json.loads``, so every line gets the same answer either way.
No ``from __future__ import annotations`` here: msgspec reads the annotations at class creation.
"""

from typing import Any

import msgspec


class StateChange(msgspec.Struct):
    number: Any = None
    project: Any = None
    branch: Any = None
    status: Any = None


class PatchSetNumber(msgspec.Struct):
    number: Any = None


class StateEvent(msgspec.Struct):
    """A ``patchset-created``, ``change-merged``, ``change-abandoned`` or ``change-restored``: what a change fact
    needs (the type is read from the line's tail)."""

    change: StateChange | None = None
    patchSet: PatchSetNumber | None = None  # Gerrit's key
    eventCreatedOn: Any = None  # Gerrit's key


class Person(msgspec.Struct):
    username: Any = None
    name: Any = None
    email: Any = None


class CommentChange(msgspec.Struct):
    project: Any = None
    branch: Any = None
    number: Any = None
    id: Any = None
    url: Any = None
    status: Any = None


class ApprovalFields(msgspec.Struct):
    type: Any = None
    value: Any = None
    description: Any = None
    oldValue: Any = None  # Gerrit's key


class CommentEvent(msgspec.Struct):
    """A ``comment-added``: what a :class:`~driverlog_daemon.model.CommentAdded` needs (the type is read from the
    line's tail). A line of another shape (``approvals`` not a list of objects, say) is refused and decoded whole."""

    author: Person | None = None
    change: CommentChange | None = None
    patchSet: PatchSetNumber | None = None  # Gerrit's key
    comment: Any = None
    approvals: list[ApprovalFields] | None = None
    eventCreatedOn: Any = None  # Gerrit's key


read_state_event = msgspec.json.Decoder(StateEvent).decode
read_comment_event = msgspec.json.Decoder(CommentEvent).decode
read_any = msgspec.json.Decoder().decode
