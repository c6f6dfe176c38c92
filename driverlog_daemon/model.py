"""The domain objects that travel between the pipeline's stages: parse -> match -> store.

Plain frozen dataclasses, no behaviour beyond a few derived properties, so that every stage can be
tested alone on plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Source = Literal["stream", "backfill", "replay"]
Result = Literal["success", "failure"]
SOURCES: tuple[Source, ...] = ("stream", "backfill", "replay")


@dataclass(frozen=True, slots=True)
class Account:
    username: str | None = None
    name: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    project: str
    branch: str
    number: int
    id: str | None = None  # the Change-Id (I + 40 hex)
    url: str | None = None
    status: str | None = None  # NEW, MERGED, ABANDONED


@dataclass(frozen=True, slots=True)
class Approval:
    type: str
    value: str
    description: str | None = None
    old_value: str | None = None


@dataclass(frozen=True, slots=True)
class CommentAdded:
    """A review message with what matching needs: from a ``comment-added`` event or a backfilled message."""

    author: Account
    change: Change
    patch_set: int
    comment: str
    created_on: int  # eventCreatedOn (stream) or the message timestamp (query), seconds since the epoch
    approvals: tuple[Approval, ...] = ()


class Verification(NamedTuple):
    """One CI result for one driver: what a row of the ``verifications`` table holds.

    A named tuple, not a dataclass: many are built per second and shipped between processes by ``replay``.
    """

    driver_key: tuple[str, str, str]  # (project_id, vendor, name)
    ci_account: str
    change_number: int
    patch_set: int
    comment_sha256: str
    comment_time: int
    result: Result
    evidence: str
    project: str
    branch: str
    release: str  # the registry's release id, "" when the branch maps to none
    change_status: str | None
    review_url: str | None
    change_id: str | None
