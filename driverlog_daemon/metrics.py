"""Prometheus metrics. The names and labels here are a public interface (docs/metrics.md).

Each daemon (and each test) gets its own :class:`Metrics` with its own ``CollectorRegistry``, so nothing is
global. Stages report in aggregates (per block, per batch), never per line, to keep the hot path cheap.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from driverlog_daemon import __version__

# No `_created` series: they double every counter's series and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Under ``run`` the daemon and its web tier are separate processes sharing prometheus-client's multiprocess files;
# a gauge is the daemon's latest value (ignored in a single process).
_LATEST: Literal["mostrecent"] = "mostrecent"

#: (project, vendor, driver, release, newest verification time, newest mark success time or None)
ReleaseTimes = Iterable[tuple[str, str, str, str, int, int | None]]


class _Watching:
    """The gauges read from the database at each scrape (:class:`Collector` s: nothing kept per series, so a driver
    that leaves the registry leaves the metric)."""

    _scrape: CollectorRegistry

    def watch_releases(self, read: Callable[[], ReleaseTimes]) -> None:
        """Per driver x release gauges (O(drivers x releases))."""
        self._scrape.register(_ReleaseCollector(read))

    def watch_drivers(self, read: Callable[[], DriverTimes]) -> None:
        """Per driver gauges (O(drivers x releases))."""
        self._scrape.register(_DriverCollector(read))

    def watch_health(self, read: Callable[[], HealthRows]) -> None:
        """Per driver pass rate and coverage, and the drivers at risk."""
        self._scrape.register(_HealthCollector(read))

    def watch_gaps(self, read: Callable[[], tuple[Sequence[Any], int | None, int | None]]) -> None:
        """Open gaps and the cursor's lag."""
        self._scrape.register(_GapCollector(read))

    def watch_history(self, read: Callable[[], tuple[int, int]]) -> None:
        """(bindings done, bindings) of the history imports under way."""
        self._scrape.register(_HistoryCollector(read))

    def watch_jobs(self, read: Callable[[], JobRows], every: float = 300.0) -> None:
        """Per driver: jobs that flaked, and the failed share that flakes explain (read at most every ``every``
        seconds: each read parses the window's job lines)."""
        self._scrape.register(_JobsCollector(read, every))

    def watch_outbox(self, read: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        """Each webhook's outbox."""
        self._scrape.register(_OutboxCollector(read))


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


class Metrics(_Watching):
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


#: (project, vendor, driver, ci_account, newest verification time) of each registered CI driver with one
DriverTimes = Iterable[tuple[str, str, str, str, int]]


class _DriverCollector(Collector):
    """Read from the database at each scrape, not kept in the daemon's multiprocess files: a driver that leaves the
    registry leaves the metric (prometheus-client cannot remove a series in multiprocess mode)."""

    def __init__(self, read: Callable[[], DriverTimes]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("driverlog_driver_last_verification_timestamp_seconds",
                                   "Comment time of a driver's newest verification (drivers with at least one).",
                                   labels=["project", "vendor", "driver", "ci_account"])
        for project, vendor, driver, account, t in self.read():
            family.add_metric([project, vendor, driver, account], t)
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _ReleaseCollector(Collector):
    def __init__(self, read: Callable[[], ReleaseTimes]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        labels = ["project", "vendor", "driver", "release"]
        last = GaugeMetricFamily("driverlog_driver_release_last_verification_timestamp_seconds",
                                 "Comment time of a driver's newest verification for a release (any change).",
                                 labels=labels)
        success = GaugeMetricFamily("driverlog_driver_release_last_mark_success_timestamp_seconds",
                                    "Comment time of a driver's mark for a release, when the mark is a success.",
                                    labels=labels)
        for project, vendor, driver, release, t, mark_success in self.read():
            last.add_metric([project, vendor, driver, release], t)
            if mark_success is not None:
                success.add_metric([project, vendor, driver, release], mark_success)
        yield last
        yield success

    def describe(self) -> Iterator[Metric]:
        return iter(())


#: (project, vendor, driver, 30-day pass rate, 30-day coverage, at risk) of each registered CI driver
HealthRows = Iterable[tuple[str, str, str, float | None, float | None, bool | None]]


class _HealthCollector(Collector):
    def __init__(self, read: Callable[[], HealthRows]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        labels = ["project", "vendor", "driver"]
        passes = GaugeMetricFamily("driverlog_driver_pass_ratio_30d",
                                   "A driver's successes / verifications over 30 days (drivers with a run).",
                                   labels=labels)
        coverage = GaugeMetricFamily("driverlog_driver_coverage_ratio_30d",
                                     "Merged changes of a driver's review project in 30 days that its CI verified "
                                     "at the merged patch set, as a ratio (projects with a merge).", labels=labels)
        at_risk = 0
        for project, vendor, driver, rate, ratio, risk in self.read():
            if rate is not None:
                passes.add_metric([project, vendor, driver], rate)
            if ratio is not None:
                coverage.add_metric([project, vendor, driver], ratio)
            at_risk += risk is True
        yield passes
        yield coverage
        yield GaugeMetricFamily("driverlog_drivers_at_risk",
                                "Drivers with no CI success within [health] silence_days (Cinder's rule).",
                                value=at_risk)

    def describe(self) -> Iterator[Metric]:
        return iter(())


JobRows = Iterable[tuple[str, str, str, int, float | None]]


class _JobsCollector(Collector):
    """Its rows are read on a thread of their own, at most every ``every`` seconds: a scrape never waits for the
    read (it parses the window's job lines) and shows the last one (none before the first has ended)."""

    def __init__(self, read: Callable[[], JobRows], every: float) -> None:
        self.read, self.every = read, every
        self._rows: list[tuple[str, str, str, int, float | None]] = []
        self._at = -math.inf
        self._lock = threading.Lock()

    def refresh(self) -> None:
        try:
            self._rows = list(self.read())
        except Exception:  # a read that fails leaves the last rows; it is asked again after the interval
            pass
        finally:
            self._lock.release()

    def collect(self) -> Iterator[Metric]:
        if time.monotonic() - self._at >= self.every and self._lock.acquire(blocking=False):
            self._at = time.monotonic()
            threading.Thread(target=self.refresh, name="driverlog-job-metrics", daemon=True).start()
        labels = ["project", "vendor", "driver"]
        flaky = GaugeMetricFamily("driverlog_driver_flaky_jobs_30d", "Jobs of a driver's CI that reported SUCCESS "
                                  "and a failure on one patch set in 30 days.", labels=labels)
        share = GaugeMetricFamily("driverlog_driver_failures_on_flaky_ratio_30d", "The share of a driver's failed "
                                  "job runs in 30 days that were on a patch set where the job flaked (drivers with a "
                                  "failed run).", labels=labels)
        for project, vendor, driver, jobs, ratio in self._rows:
            flaky.add_metric([project, vendor, driver], jobs)
            if ratio is not None:
                share.add_metric([project, vendor, driver], ratio)
        yield flaky
        yield share

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _GapCollector(Collector):
    def __init__(self, read: Callable[[], tuple[Sequence[Any], int | None, int | None]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        gaps, cursor, newest = self.read()
        yield GaugeMetricFamily("driverlog_open_gaps", "Backfill gaps not closed yet (results there are not proven).",
                                value=len(gaps))
        oldest = min((g.opened_at for g in gaps), default=None)
        yield GaugeMetricFamily("driverlog_oldest_open_gap_age_seconds",
                                "How long the oldest open gap has been open (0 with none).",
                                value=0.0 if oldest is None else max(0.0, time.time() - oldest))
        yield GaugeMetricFamily("driverlog_cursor_lag_seconds",
                                "Newest event seen minus the proven cursor, in Gerrit's clock.",
                                value=0.0 if cursor is None or newest is None else max(0, newest - cursor))

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _HistoryCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        done, total = self.read()
        yield GaugeMetricFamily("driverlog_history_import_bindings",
                                "CI bindings of the history imports under way (0 with none).", value=total)
        yield GaugeMetricFamily("driverlog_history_import_bindings_done",
                                "Of those, the bindings whose import is done.", value=done)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _OutboxCollector(Collector):
    def __init__(self, read: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("driverlog_webhook_outbox_pending", "Webhook deliveries not delivered yet, by hook.",
                                  labels=["hook"])
        oldest = GaugeMetricFamily("driverlog_webhook_outbox_oldest_pending_age_seconds",
                                   "How long the oldest pending delivery of a hook has waited (0 with none).",
                                   labels=["hook"])
        dead = GaugeMetricFamily("driverlog_webhook_outbox_dead",
                                 "Webhook deliveries given up after retry_for_hours, by hook.", labels=["hook"])
        for hook, state in self.read().items():
            depth.add_metric([hook], state["pending"])
            oldest.add_metric([hook], state["oldest_pending_age_seconds"] or 0.0)
            dead.add_metric([hook], state["dead"])
        yield depth
        yield oldest
        yield dead

    def describe(self) -> Iterator[Metric]:
        return iter(())


class WebMetrics(_Watching):
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
