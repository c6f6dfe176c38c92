"""The registry's checks: JSON with duplicate keys rejected, its JSON Schema, and what a schema cannot say (unknown
projects and releases, duplicate drivers, patterns that are not regular expressions, dates, series). Each problem
is one ``<json path>: <reason>`` string; all of them are reported at once (``load.parse_registry``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from driverlog_daemon.registry import legacy

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # driverlog_daemon/
_REPO_DIR = _PACKAGE_DIR.parent


def shipped(*candidates: Path) -> Path:
    """The first of these files that exists (inside the wheel, or at the top of a source checkout)."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[-1]


#: The registry shipped with the project, and its schema (inside the wheel, or at the top of a source checkout).
DEFAULT_REGISTRY_PATH = shipped(_PACKAGE_DIR / "_data" / "default_data.json", _REPO_DIR / "data" / "default_data.json")
SCHEMA_PATH = shipped(
    _PACKAGE_DIR / "_data" / "default_data.schema.json", _REPO_DIR / "schema" / "default_data.schema.json"
)


class DuplicateCheckingDict(dict[str, Any]):
    duplicates: list[str]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> DuplicateCheckingDict:
        obj = cls()
        obj.duplicates = []
        for key, value in pairs:
            if key in obj:
                obj.duplicates.append(key)
            obj[key] = value
        return obj


def duplicate_key_errors(node: Any, path: str) -> Iterator[str]:
    if isinstance(node, dict):
        for key in getattr(node, "duplicates", ()):
            yield f"{_join(path, key)}: duplicate key {key!r}"
        for key, value in node.items():
            yield from duplicate_key_errors(value, _join(path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from duplicate_key_errors(value, f"{path}[{index}]")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def format_path(parts: Iterator[str | int] | list[str | int] | tuple[str | int, ...]) -> str:
    """``['drivers', 17, 'ci']`` -> ``drivers[17].ci`` (``$`` for the document itself)."""
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out or "$"


@cache
def _validator() -> Any:
    import jsonschema  # only when a registry is validated: a short command need not pay for its imports

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(document: Any) -> Iterator[str]:
    errors = sorted(_validator().iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        yield f"{format_path(list(error.absolute_path))}: {error.message}"


_DATE_SHAPE = re.compile(r"^\d{4}-[A-Z][a-z]{2}-\d{2}$")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, start=1)}


def parse_start_date(value: str) -> datetime:
    """DriverLog's release start date (``2018-Aug-29``) as midnight UTC."""
    year, month, day = value.split("-")
    return datetime(int(year), _MONTHS[month], int(day), tzinfo=UTC)


def _regex_error(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    return None


def _items(document: Any, key: str) -> list[tuple[int, dict[str, Any]]]:
    """The objects of a top-level list, by index; anything the schema already rejected is left out."""
    items = document.get(key) if isinstance(document, dict) else None
    return [(i, x) for i, x in enumerate(items) if isinstance(x, dict)] if isinstance(items, list) else []


def _str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def semantic_errors(document: Any) -> Iterator[str]:
    """Checks JSON Schema cannot express. They run even when the schema found errors, on what is usable."""
    releases = _items(document, "releases")
    release_ids = {_str(r, "id") for _, r in releases}
    project_ids = {_str(p, "id") for _, p in _items(document, "projects")}
    series_seen: dict[str, int] = {}
    for index, release in releases:
        series = _str(release, "series")
        if series is not None:
            if series in series_seen:
                yield f"releases[{index}].series: {series!r} is already the series of releases[{series_seen[series]}]"
            series_seen.setdefault(series, index)
        start = _str(release, "start")
        if start is None or not _DATE_SHAPE.match(start):
            continue  # the schema reports it
        try:
            parse_start_date(start)
        except (ValueError, KeyError):
            yield f"releases[{index}].start: unparsable date {start!r}"
    yield from legacy.twin_errors(document)
    seen: dict[tuple[str, str, str], int] = {}
    for index, driver in _items(document, "drivers"):
        where = f"drivers[{index}]"
        project_id, vendor, name = _str(driver, "project_id"), _str(driver, "vendor"), _str(driver, "name")
        if project_id is not None and vendor is not None and name is not None:
            key = (project_id, vendor, name)
            if key in seen:
                yield f"{where}: duplicate driver {key!r} (project_id, vendor, name), first at drivers[{seen[key]}]"
            else:
                seen[key] = index
        if project_id is not None and project_id not in project_ids:
            yield f"{where}.project_id: {project_id!r} is not among projects"
        driver_releases = driver.get("releases")
        for r_index, release_id in enumerate(driver_releases if isinstance(driver_releases, list) else []):
            if isinstance(release_id, str) and release_id not in release_ids:
                yield f"{where}.releases[{r_index}]: {release_id!r} is not among releases"
        ci = driver.get("ci")
        if isinstance(ci, dict):
            for pattern_key in ("success_pattern", "failure_pattern"):
                pattern = _str(ci, pattern_key)
                problem = _regex_error(pattern) if pattern is not None else None
                if problem:
                    yield f"{where}.ci.{pattern_key}: {problem}"
