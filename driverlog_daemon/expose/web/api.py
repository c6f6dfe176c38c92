"""DriverLog's API shapes (``shared/docs/driverlog-api.md``) from the registry and the database's rows.

Plain functions on plain data: the routes in ``app.py`` call them, the page's templates read the same records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from driverlog_daemon.parse.bounds import MAX_INT, in_range
from driverlog_daemon.registry.load import Driver, Registry
from driverlog_daemon.store.reads import DriverRow

STATUSES = ("passing", "failing", "stale", "unknown")


class BadRequest(Exception):
    """A query value that cannot be used; the message is the one-line reason given with the 400."""


@dataclass(frozen=True, slots=True)
class Filters:
    project_id: str | None = None
    vendor: str | None = None
    release_ids: frozenset[str] | None = None  # lower-case; None: the registry's active releases

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        releases = query.get("release_id", query.get("release"))
        ids = None
        if releases is not None:
            ids = frozenset(r.strip().lower() for r in releases.split(",") if r.strip())
        return cls(query.get("project_id") or None, query.get("vendor") or None, ids)


def status(row: DriverRow | None, driver: Driver, now: float, stale_after_days: float) -> str:
    """``unknown`` (no CI, or no result yet), ``stale`` (no CI comment for ``stale_after_days``), else the
    newest mark's ``passing``/``failing`` (``unknown`` when no result has been on merged code yet)."""
    if driver.ci is None or row is None or row.latest is None:
        return "unknown"
    if now - row.latest.comment_time > stale_after_days * 86400:
        return "stale"
    if not row.marks:
        return "unknown"
    newest = max(row.marks.values(), key=lambda m: m.comment_time)
    return "passing" if newest.result == "success" else "failing"


def driver_record(driver: Driver, row: DriverRow | None, registry: Registry, now: float,
                  stale_after_days: float, health: dict[str, Any] | None = None) -> dict[str, Any]:
    """One driver as upstream's dashboard served it, plus ours: ``id``, ``latest``, ``status``, ``health``."""
    record: dict[str, Any] = {
        "project_id": driver.project_id, "vendor": driver.vendor, "name": driver.name,
        "description": driver.description, "wiki": driver.wiki,
        "maintainers": [{k: v for k, v in m.items() if k != "email"} for m in driver.maintainers],
    }
    if driver.repo is not None:
        record["repo"] = driver.repo
    if driver.ci is not None:  # a CI judged by its Verified vote has no patterns to show
        record["ci"] = {"id": driver.ci.account} if driver.ci.by_vote else {
            "id": driver.ci.account, "success_pattern": driver.ci.success_pattern,
            "failure_pattern": driver.ci.failure_pattern}
    if driver.verification is not None:
        record["verification"] = driver.verification
    releases: dict[str, dict[str, Any]] = {r.lower(): {"ci_tested": False} for r in driver.releases}
    for release, mark in (row.marks if row else {}).items():
        releases[release.lower()] = {"ci_tested": True, "ci_result": mark.result == "success",
                                     "comment": mark.evidence, "timestamp": mark.comment_time,
                                     "review_url": mark.review_url}
    known = registry.releases_by_lower_id
    record["releases"] = releases
    record["releases_info"] = sorted(
        ({"release_id": r, "name": known[r].id.capitalize(), "wiki": known[r].wiki} for r in releases if r in known),
        key=lambda info: info["name"])
    record["project_name"] = registry.projects.get(driver.project_id, driver.project_id)
    record["id"] = row.id if row else None
    latest = row.latest if row else None
    record["latest"] = None if latest is None else {
        "result": latest.result, "comment": latest.evidence, "timestamp": latest.comment_time,
        "review_url": latest.review_url, "change_number": latest.change_number, "patch_set": latest.patch_set,
        "release": latest.release.lower() if latest.release else None}  # one spelling: DriverLog's map keys
    record["status"] = status(row, driver, now, stale_after_days)
    record["health"] = health if driver.ci is not None else None
    return record


def passes(record: Mapping[str, Any], filters: Filters, registry: Registry, *, project: bool = True,
           vendor: bool = True, release: bool = True) -> bool:
    if project and filters.project_id and record["project_id"].lower() != filters.project_id.lower():
        return False
    if vendor and filters.vendor and record["vendor"].lower() != filters.vendor.lower():
        return False
    if release:
        wanted = filters.release_ids
        if wanted is None:
            wanted = frozenset(r.id.lower() for r in registry.releases if r.active)
        if not any(info["release_id"] in wanted for info in record["releases_info"]):
            return False
    return True


def releases_list(records: Iterable[Mapping[str, Any]], query: str) -> list[dict[str, str]]:
    seen = {info["release_id"]: info["name"] for r in records for info in r["releases_info"]}
    items = [{"id": i, "text": t} for i, t in seen.items() if query.lower() in t.lower()]
    return sorted(items, key=lambda x: x["text"], reverse=True)


def project_ids_list(records: Iterable[Mapping[str, Any]], query: str) -> list[dict[str, str]]:
    seen = {r["project_id"]: r["project_name"] for r in records}
    return sorted(({"id": i, "text": t} for i, t in seen.items() if query.lower() in t.lower()),
                  key=lambda x: x["text"])


def vendors_list(records: Iterable[Mapping[str, Any]], query: str) -> list[dict[str, str]]:
    seen = {r["vendor"] for r in records}
    return sorted(({"id": v, "text": v} for v in seen if query.lower() in v.lower()), key=lambda x: x["text"])


def int_param(query: Mapping[str, str], name: str, default: int | None, *, minimum: int = 0,
              maximum: int | None = None) -> int | None:
    """An integer query value; a bad one is a :class:`BadRequest` with a one-line reason."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw[:40]!r}") from None
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    if maximum is None and not in_range(value):  # SQLite's integers end at 63 bits
        raise BadRequest(f"{name} must be at most {MAX_INT}")
    return min(value, maximum) if maximum is not None else value
