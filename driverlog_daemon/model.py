"""The domain objects that travel between the pipeline's stages: parse -> match -> store.

Plain named tuples, immutable, no behaviour beyond a few derived properties, so that every stage can be
tested alone on plain data. (Named tuples rather than dataclasses: they pickle small between replay's processes,
and creating dataclasses at import is a cost every short command would pay.)
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Source = Literal["stream", "backfill", "replay"]
Result = Literal["success", "failure"]
SOURCES: tuple[Source, ...] = ("stream", "backfill", "replay")


class Account(NamedTuple):
    username: str | None = None
    name: str | None = None
    email: str | None = None


class Change(NamedTuple):
    project: str
    branch: str
    number: int
    id: str | None = None  # the Change-Id (I + 40 hex)
    url: str | None = None
    status: str | None = None  # NEW, MERGED, ABANDONED


class Approval(NamedTuple):
    type: str
    value: str
    description: str | None = None
    old_value: str | None = None


class CommentAdded(NamedTuple):
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


class BackfillRun(NamedTuple):
    """What one backfill asked of Gerrit (recorded with the gaps it closes: the ingestion ledger)."""

    trigger: str  # start, reconnect, dropped-output, stall, resumed, retry
    since: int  # Gerrit's time its window started at (the overlap included)
    started_at: float  # the daemon's time
    queries: int
    commands: int  # SSH commands run: one a page
    repasses: int  # re-reads of rows that moved while it paged
    changes_read: int  # change rows read
    ci_messages: int  # CI review messages in its window
    throttled_seconds: float  # waited for [gerrit] max_queries_per_minute
    capped: bool = False  # its gap was older than backfill_max_age_hours: the older part was not recovered
    history: bool = False  # the first start's backfill: what it finds before the start is history, like the import


class KeptComment(NamedTuple):
    """A registered CI account's comment as ``ci_comments`` keeps it, without when and how it arrived (the store
    adds those): made by ``match.kept.keep``."""

    ci_account: str
    change_number: int
    patch_set: int
    comment_sha256: str
    comment_time: int
    project: str
    branch: str
    change_status: str | None
    review_url: str | None
    change_id: str | None
    body: bytes  # zlib of the message's UTF-8, at most match.kept.MAX_BYTES of it
    approvals: str | None  # JSON, only for a message without its "Patch Set N:" line (the vote rule reads them)
    truncated: int  # 1: the message was longer than MAX_BYTES


#: The event types that carry a change's state (all subscribed by default).
CHANGE_STATE_EVENTS = frozenset({"patchset-created", "change-merged", "change-abandoned", "change-restored"})


class ChangeFact(NamedTuple):
    """What one source said of a change at one moment (Gerrit's clock): the input of the ``changes`` table.

    From a ``patchset-created``, ``change-merged``, ``change-abandoned`` or ``change-restored`` event, from the
    change of a CI's ``comment-added``, or from a ``gerrit query`` row. Facts are merged order-independently
    (store.py): a merge is final, otherwise the newest status wins; patch set numbers only grow.
    """

    number: int
    project: str
    branch: str
    status: str | None  # NEW, MERGED, ABANDONED (None: not said)
    time: int  # eventCreatedOn, or the query row's lastUpdated
    patch_set: int | None  # a patch set that exists (the current one is at least this)
    merged_patch_set: int | None  # the patch set that merged (change-merged's patchSet; a merged row's current)
    merged_at: int | None  # the merge time, or an upper bound of it (a merged query row's lastUpdated)


# import_work phases (docs/history.md)
WINDOW, SEARCH, DONE, FIRST, FINAL = "window", "search", "done", "first", "final"

class Work(NamedTuple):
    """One ``import_work`` row."""

    kind: str  # account, project, rejudge
    name: str  # the CI account, the review project, or the drivers.id (rejudge)
    drivers: tuple[int, ...]  # an account's drivers whose marks the search is for; a rejudge row's driver
    phase: str
    position: int | None = None  # Gerrit's time the next page reads back from (rows updated at or before it)
    reread_since: int | None = None  # rows updated since then are read again when the phase ends


class ImportStep(NamedTuple):
    """What one step of an import asked of Gerrit, and the work rows it moved on (written with its results)."""

    import_id: int
    queries: int = 0
    commands: int = 0
    changes_read: int = 0
    ci_messages: int = 0
    throttled_seconds: float = 0.0
    work: tuple[Work, ...] = ()
    rejudged: int = 0


class InputError(Exception):
    """A file a command was given cannot be read as what it should be: ``PATH: what is wrong``, in one line."""
