"""A driver's page (``/drivers/<id>``): its record, verification history, missed changes, mark history, chart,
when its registry entry last changed, and why some of its CI's comments did not count."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from driverlog_daemon.expose.web import api, pages
from driverlog_daemon.expose.web.responses import Response, json_response, text_response
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import reads, reads_health, reads_jobs, reads_registry, reads_unjudged

HISTORY_PAGE = 50


class DriverView:
    def __init__(self, reader: reads.Reader, recs: Callable[[], tuple[Registry, list[dict[str, Any]]]],
                 html: Callable[..., Response], clock: Callable[[], float], silence_days: float) -> None:
        self.reader, self.recs, self.html, self.clock, self.silence_days = reader, recs, html, clock, silence_days

    def with_latest_unjudged(self, record: dict[str, Any] | None,
                             conn: sqlite3.Connection | None = None) -> dict[str, Any] | None:
        """One driver's record with the first lines of its CI's latest comments that gave it no verdict (read on
        ``conn``, the caller's snapshot, else one of its own)."""
        if record is None or not (record.get("health") or {}).get("unjudged"):
            return record
        if conn is None:
            with self.reader.snapshot() as own:
                return self.with_latest_unjudged(record, own)
        health = record["health"]
        latest = reads_unjudged.latest(conn, record["id"], self.clock())
        return {**record, "health": {**health, "unjudged": {**health["unjudged"], "latest": latest}}}

    def page(self, query: Mapping[str, str], driver_id: str) -> Response:
        page = api.int_param(query, "page", 1, minimum=1) or 1
        transitions_page = api.int_param(query, "transitions_page", 1, minimum=1) or 1
        registry, records = self.recs()
        record = next((r for r in records if r["id"] == int(driver_id)), None)
        now = self.clock()
        with self.reader.snapshot() as conn:
            known = reads.driver_key(conn, int(driver_id))
            if known is None:
                return text_response("404 Not Found", "no such driver")
            history, total = reads.history(conn, int(driver_id), limit=HISTORY_PAGE,
                                             offset=(page - 1) * HISTORY_PAGE)
            missed = reads_health.missed(conn, int(driver_id), now, 30)
            transitions, transitions_total = reads_health.transitions(
                conn, int(driver_id), limit=HISTORY_PAGE, offset=(transitions_page - 1) * HISTORY_PAGE)
            chart = pages.chart(reads_health.daily(conn, int(driver_id), now))
            entry = reads_registry.entry_changes(conn).get(known[0])
            jobs = reads_jobs.jobs(conn, int(driver_id), now, reads_jobs.DEFAULT_DAYS)
            record = self.with_latest_unjudged(record, conn)
        return self.html("driver.html", record=record, key=known[0], removed=known[1], history=history,
                          page=page, pages=max(1, -(-total // HISTORY_PAGE)), total=total, driver_id=int(driver_id),
                          registry=registry, missed=missed, transitions=transitions, chart=chart,
                          transitions_page=transitions_page,
                          transitions_pages=max(1, -(-transitions_total // HISTORY_PAGE)),
                          silence_days=self.silence_days, entry=entry, jobs=jobs)

    def api_jobs(self, query: Mapping[str, str], driver_id: str) -> Response:
        """``/api/1.0/drivers/<id>/jobs?days=7|30|90``."""
        days = api.int_param(query, "days", reads_jobs.DEFAULT_DAYS, minimum=1) or reads_jobs.DEFAULT_DAYS
        if days not in reads_jobs.WINDOWS:
            raise api.BadRequest(f"days: one of {', '.join(map(str, reads_jobs.WINDOWS))}")
        with self.reader.snapshot() as conn:
            if reads.driver_key(conn, int(driver_id)) is None:
                return json_response({"error": "no such driver"}, "404 Not Found")
            jobs = reads_jobs.jobs(conn, int(driver_id), self.clock(), days)
        if jobs is None:
            return json_response({"error": "the driver has no CI"}, "404 Not Found")
        return json_response(jobs)
