"""What the writer's queue carries besides blocks of stream lines (a block is a plain tuple): one class per kind of
work, each with the future its sender waits on when it waits."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import Future

    from driverlog_daemon.model import BackfillRun, ChangeFact, CommentAdded, ImportStep
    from driverlog_daemon.registry.load import Registry
    from driverlog_daemon.store.outbox import DeliveryOutcome
    from driverlog_daemon.store.registry_apply import Applied, HistorySettings
    from driverlog_daemon.store.store import Batch, BatchResult


class Backfilled:
    __slots__ = ("changes", "close_gaps_up_to", "comments", "done", "run")

    def __init__(self, comments: list[CommentAdded], changes: list[ChangeFact], done: Future[BatchResult],
                 close_gaps_up_to: int | None = None, run: BackfillRun | None = None) -> None:
        self.comments, self.changes, self.done, self.close_gaps_up_to = comments, changes, done, close_gaps_up_to
        self.run = run


class Reload:
    __slots__ = ("done", "history", "raw", "registry")

    def __init__(self, registry: Registry, done: Future[Applied | None], raw: bytes | None = None,
                 history: HistorySettings | None = None) -> None:
        self.registry, self.done, self.raw, self.history = registry, done, raw, history


class Imported:
    """A step of a history import: review messages and change facts read, and the step's progress."""

    __slots__ = ("changes", "comments", "context", "done", "step")

    def __init__(self, comments: list[CommentAdded], changes: list[ChangeFact], step: ImportStep, context: str,
                 done: Future[BatchResult]) -> None:
        self.comments, self.changes, self.step, self.context, self.done = comments, changes, step, context, done


class Rejudge:
    __slots__ = ("done", "driver_id", "step")

    def __init__(self, driver_id: int, step: ImportStep, done: Future[int]) -> None:
        self.driver_id, self.step, self.done = driver_id, step, done


class OpenGap:
    __slots__ = ("done", "fallback_since", "reason")

    def __init__(self, reason: str, fallback_since: int, done: Future[tuple[int, int]]) -> None:
        self.reason = reason
        self.fallback_since = fallback_since  # when nothing was ever committed from the stream: the initial import
        self.done = done  # (gap id, since)


class ImportFailed:
    __slots__ = ("error", "import_id")

    def __init__(self, import_id: int, error: str) -> None:
        self.import_id, self.error = import_id, error


class QueuedBatch:
    __slots__ = ("batch", "done")

    def __init__(self, batch: Batch, done: Future[BatchResult]) -> None:
        self.batch, self.done = batch, done


class Delivery:
    __slots__ = ("done", "outcome")

    def __init__(self, outcome: DeliveryOutcome, done: Future[None]) -> None:
        self.outcome, self.done = outcome, done


class GapFailed:
    __slots__ = ("error", "up_to")

    def __init__(self, up_to: int, error: str) -> None:
        self.up_to, self.error = up_to, error
