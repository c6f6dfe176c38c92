"""Prometheus metrics. The names and labels here are a public interface (docs/metrics.md).

Each daemon (and each test) gets its own :class:`Metrics` with its own ``CollectorRegistry``, so nothing is
global. Stages report in aggregates (per block, per batch), never per line, to keep the hot path cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.exposition import generate_latest

from driverlog_daemon import __version__
from driverlog_daemon.gauges import Watching

# No `_created` series: they double every counter's series and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Under ``run`` the daemon and its web tier are separate processes sharing prometheus-client's multiprocess files;
# a gauge is the daemon's latest value (ignored in a single process).
_LATEST: Literal["mostrecent"] = "mostrecent"

def _build_info(registry: CollectorRegistry) -> None:
    Gauge("driverlog_build_info", "driverlog-daemon's version.", ["version"], registry=registry,
          multiprocess_mode=_LATEST).labels(__version__).set(1)


def _registry_size(registry: CollectorRegistry) -> tuple[Gauge, Gauge]:
    return (Gauge("driverlog_registry_drivers", "Drivers in the loaded registry.", registry=registry,
                  multiprocess_mode=_LATEST),
            Gauge("driverlog_registry_ci_accounts", "CI accounts in the loaded registry.", registry=registry,
                  multiprocess_mode=_LATEST))


def http_requests_counter(registry: CollectorRegistry) -> Counter:
    return Counter("driverlog_http_requests", "HTTP requests answered, by route and status.", ["route", "status"],
                   registry=registry)


class Metrics(Watching):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._scrape = r
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, …
        _build_info(r)
        # parse / match
        self.events = Counter("driverlog_events", "Events read, by Gerrit event type.", ["type"], registry=r)
        self.malformed = Counter("driverlog_malformed_lines", "Lines rejected by the parser, by reason.",
                                 ["reason"], registry=r)
        self.ci_comments = Counter("driverlog_ci_comments", "Review messages by registered CI accounts.",
                                   ["ci_account"], registry=r)
        self.ci_comments_unmatched = Counter(
            "driverlog_ci_comments_unmatched",
            "Review messages by registered CI accounts that matched no driver's pattern.", ["ci_account"],
            registry=r)
        self.last_event_time = Gauge("driverlog_last_event_timestamp_seconds",
                                     "eventCreatedOn of the newest event processed.",
                                     registry=r, multiprocess_mode=_LATEST)
        # store
        self.verifications = Counter("driverlog_verifications_recorded",
                                     "Verifications inserted into the database.", ["source", "result"], registry=r)
        self.duplicates = Counter("driverlog_verifications_duplicate",
                                  "Verifications already present (same natural key), not inserted again.",
                                  ["source"], registry=r)
        self.db_write_retries = Counter("driverlog_db_write_retries", "Database batch writes retried.",
                                        registry=r)
        self.db_write_errors = Counter("driverlog_db_write_errors",
                                       "Database batch writes that failed (the batch is kept and retried).",
                                       registry=r)
        self.batch_rows = Histogram("driverlog_db_batch_rows", "Verifications per committed batch.",
                                    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=r)
        self.last_verification_time = Gauge("driverlog_last_verification_timestamp_seconds",
                                            "Comment time of the newest verification recorded.",
                                            registry=r, multiprocess_mode=_LATEST)
        # stream / backfill
        self.gerrit_clock_offset = Gauge("driverlog_gerrit_clock_offset_seconds",
                                         "Gerrit's clock minus the daemon's, as the stream's events show it "
                                         "(0 until enough events were seen).", registry=r,
                                         multiprocess_mode=_LATEST)
        self.connected = Gauge("driverlog_gerrit_connected", "1 while the event stream is connected.",
                               registry=r, multiprocess_mode=_LATEST)
        self.connect_attempts = Counter("driverlog_gerrit_connect_attempts", "SSH connection attempts.",
                                        registry=r)
        self.gerrit_commands = Counter("driverlog_gerrit_commands",
                                       "SSH commands run on Gerrit, by command (stream, query, version).",
                                       ["command"], registry=r)
        for command in ("stream", "query", "version"):
            self.gerrit_commands.labels(command)
        self.backfill_throttled = Counter("driverlog_backfill_throttled_seconds",
                                          "Seconds backfills waited for max_queries_per_minute.", registry=r)
        self.reconnects = Counter("driverlog_gerrit_reconnects",
                                  "Reconnections of the event stream, by reason.", ["reason"], registry=r)
        self.stalls = Counter("driverlog_gerrit_stalls", "Stall timeouts (no bytes for stall_timeout_seconds).",
                              registry=r)
        self.dropped_output = Counter("driverlog_gerrit_dropped_output",
                                      "dropped-output events: Gerrit discarded events for this connection.",
                                      registry=r)
        self.oversized_lines = Counter("driverlog_oversized_lines",
                                       "Lines longer than max_event_bytes, skipped.", registry=r)
        self.stream_bytes = Counter("driverlog_stream_bytes", "Bytes read from the event stream.", registry=r)
        self.queue_depth = Gauge("driverlog_queue_depth", "Blocks waiting between the reader and the writer.",
                                 registry=r, multiprocess_mode=_LATEST)
        self.queue_bytes = Gauge("driverlog_queue_bytes",
                                 "Bytes of stream blocks waiting between the reader and the writer.", registry=r,
                                 multiprocess_mode=_LATEST)
        self.backfills = Counter("driverlog_backfills", "Backfill runs, by trigger.", ["trigger"], registry=r)
        self.backfill_failures = Counter("driverlog_backfill_failures", "Backfill runs that failed.",
                                         registry=r)
        self.backfill_gap_exceeded = Counter(
            "driverlog_backfill_gap_exceeded",
            "Backfills whose gap was older than backfill_max_age_hours (older events are not recovered).",
            registry=r)
        self.mark_transitions = Counter("driverlog_mark_transitions",
                                        "Mark transitions recorded (a mark appeared or changed its result).",
                                        registry=r)
        self.webhook_deliveries = Counter("driverlog_webhook_deliveries",
                                          "Webhook delivery attempts, by hook and outcome (delivered, failed, dead).",
                                          ["hook", "outcome"], registry=r)
        self.backfill_messages = Counter("driverlog_backfill_messages",
                                         "CI review messages examined by backfill.", registry=r)
        self.ingest_latency = Histogram(
            "driverlog_ingest_latency_seconds",
            "Time from a stream line read to its verification committed, per verification.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.http_requests = http_requests_counter(r)  # for an in-process web side (tests)
        # registry
        self.registry_reloads = Counter("driverlog_registry_reloads", "Registry reloads, by result.",
                                        ["result"], registry=r)
        self.registry_fetches = Counter("driverlog_registry_fetches", "Answers of the registry URL, by result.",
                                        ["result"], registry=r)
        self.registry_drivers, self.registry_ci_accounts = _registry_size(r)

    def count_events(self, by_type: Mapping[str, int]) -> None:
        for kind, n in by_type.items():
            if n:
                self.events.labels(kind).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class WebMetrics(Watching):
    """The web tier's own metrics, and the one scrape that has every metric of both sides.

    With ``multiprocess`` (always in the web tier), every worker's metrics — and under ``run`` the daemon's — are
    read from prometheus-client's multiprocess files, ``process_*`` describes the ingest daemon (``daemon_pid``; the
    serving worker when there is none), and the gauges read from the database are read here, on the web tier's
    read-only connection. Without (a test's app in one process) it is this process's metrics.
    """

    def __init__(self, *, multiprocess: bool, daemon_pid: Callable[[], int | None] = lambda: None) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        self.http_requests = http_requests_counter(self.registry)
        _build_info(self.registry)
        self._scrape = CollectorRegistry()
        if multiprocess:
            from prometheus_client import multiprocess as mp

            mp.MultiProcessCollector(self._scrape)  # type: ignore[no-untyped-call]
            ProcessCollector(registry=self._scrape, pid=lambda: daemon_pid() or "self")
        else:
            self._scrape = self.registry
            ProcessCollector(registry=self._scrape)

    def registry_size(self, drivers: int, ci_accounts: int) -> None:
        """Serve alone: no daemon sets the registry's gauges. (Made only then: under ``run`` a worker's gauge at 0
        could be the most recent value of the daemon's.)"""
        drivers_gauge, accounts_gauge = _registry_size(self.registry)
        drivers_gauge.set(drivers)
        accounts_gauge.set(ci_accounts)

    def exposition(self) -> bytes:
        return generate_latest(self._scrape)
