"""The gauges read from the database at each scrape (:class:`Collector` s): nothing kept per series, so a driver
that leaves the registry leaves the metric. :class:`Watching` is what :mod:`metrics`' registries register them
with; the names and labels are a public interface (docs/metrics.md)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: (project, vendor, driver, release, newest verification time, newest mark success time or None)
ReleaseTimes = Iterable[tuple[str, str, str, str, int, int | None]]


class Watching:
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
