"""The daemon's service in this process (no HTTP) against the Gerrit test server: what most stream tests drive."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driverlog_daemon.config import Config, DatabaseConfig, HistoryConfig, RegistryConfig, WebhookConfig
from driverlog_daemon.daemon.service import Service
from driverlog_daemon.registry.checks import DEFAULT_REGISTRY_PATH
from driverlog_daemon.source.stream import Backoff
from driverlog_daemon.store.store import Batch
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import ci_event
from driverlog_daemon.testing.gerrit.setup import SSHEnv


class Harness:
    """The daemon's service in this process (no HTTP) against the test server, with quick backoff."""

    def __init__(self, env: SSHEnv, tmp: Path, *, registry: Path = DEFAULT_REGISTRY_PATH,
                 history: HistoryConfig | None = None,
                 webhooks: tuple[WebhookConfig, ...] = (), probe_timeout: float | None = None,
                 stall_check_seconds: float | None = None, backfill_retry_base: float = 1.0,
                 backfill_page_size: int | None = None, clock: Callable[[], float] = time.time,
                 registry_config: RegistryConfig | None = None, **gerrit: Any) -> None:
        self.env = env
        self.db = tmp / "d.sqlite"
        cfg = Config(gerrit=env.config(**gerrit), registry=registry_config or RegistryConfig(str(registry)),
                     database=DatabaseConfig(str(self.db)), history=history or HistoryConfig(), webhooks=webhooks)
        self.backoff = Backoff(base=0.01, cap=0.08, rng=lambda: 1.0)
        self.service = Service(cfg, backoff=self.backoff, poll_interval=0.05, http=False, command_timeout=5,
                               probe_timeout=probe_timeout, stall_check_seconds=stall_check_seconds,
                               backfill_retry_base=backfill_retry_base, backfill_page_size=backfill_page_size,
                               clock=clock)

    def __enter__(self) -> Harness:
        self.service.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()

    def flush(self) -> None:
        """Returns once the writer has committed every block queued before."""
        self.service.writer.put_batch(Batch("stream", [])).result(timeout=10)

    def rows(self) -> list[tuple[Any, ...]]:
        return query(self.db, "SELECT change_number, result, source FROM verifications ORDER BY change_number")

    def numbers(self) -> list[int]:
        return [r[0] for r in self.rows()]

    def closed_gaps(self, reason: str) -> int:
        return int(query(self.db, "SELECT count(*) FROM gaps WHERE reason = ? AND closed_at IS NOT NULL",
                         reason)[0][0])

    def open_gaps(self) -> int:
        return int(query(self.db, "SELECT count(*) FROM gaps WHERE closed_at IS NULL")[0][0])

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.service.metrics.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)

    def connected(self) -> bool:
        return self.service.listener is not None and self.service.listener.state == "connected"

    def settled(self) -> bool:
        """Connected, subscribed, and the backfill that follows every connection is done, and the history import
        the first start plans."""
        return (self.connected() and self.env.server.stream_count >= 1 and self.service.backfiller.idle()
                and self.service.history().imports == 0)

    def outage(self, before: int, while_away: list[int]) -> None:
        """A result over the stream, then the connection lost for a moment while ``while_away`` are posted (only
        ``gerrit query`` can tell of them); returns once the backfill has recorded them."""
        server = self.env.server
        server.push_event(ci_event(before))
        assert wait_until(lambda: before in self.numbers())
        server.refuse_connections(0.3)
        server.drop_connections()
        for n in while_away:
            server.record_only(ci_event(n))
        assert wait_until(lambda: set(while_away) <= set(self.numbers()))
