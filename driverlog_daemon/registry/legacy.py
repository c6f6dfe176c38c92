"""DriverLog's 2014 registry form, as its "Getting Started" guide (May 2014) taught it: which keys it had, what
each is today, the warnings ``validate`` prints for them, and the upgrade to today's form.

Two driver keys changed since: ``maintainer`` (one object, its ``name`` possibly several people separated by
commas) became ``maintainers`` (a list, one person each, the e-mail staying with the first), and ``ci_id`` (a CI
account whose Verified vote decides) became ``ci`` (``{"id": …}``, optionally with the two patterns). The 2014
``verification`` level is not legacy: it stays, a documented field of today's form.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

#: 2014 key -> today's key
LEGACY_KEYS: Mapping[str, str] = {"maintainer": "maintainers", "ci_id": "ci"}

#: the 2014 ``verification`` levels, as upstream's dashboard named them
VERIFICATION_LEVELS: Mapping[str, str] = {
    "self_verification": "Self-verified by the vendor",
    "3rd_party_verification": "Verified by a third party",
    "external_ci_verification": "Verified by an external CI",
}


def _drivers(document: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    drivers = document.get("drivers") if isinstance(document, dict) else None
    for index, driver in enumerate(drivers if isinstance(drivers, list) else []):
        if isinstance(driver, dict):
            yield index, driver


def _today(key: str, value: Any) -> tuple[str, Any]:
    """A 2014 key and its value -> today's key and value (the same meaning)."""
    if key == "maintainer":  # 2014 named several people in one object; today's is one object each
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return "maintainers", [value]
        names = [n.strip() for n in value["name"].split(",") if n.strip()] or [value["name"]]
        first = {**value, "name": names[0]}  # its e-mail and IRC name are the first person's
        return "maintainers", [first, *({"name": n} for n in names[1:])]
    if key == "ci_id":
        return "ci", {"id": value}
    return key, value


def _name(driver: dict[str, Any]) -> str:
    return " / ".join(str(driver.get(k, "?")) for k in ("project_id", "vendor", "name"))


def legacy_notes(document: Any) -> list[str]:
    """One line per driver and 2014 key that has no modern twin: where it is and what it is today."""
    import json

    notes = []
    for index, driver in _drivers(document):
        for old, new in LEGACY_KEYS.items():
            if old in driver and new not in driver:
                today = json.dumps(dict([_today(old, driver[old])]), ensure_ascii=False)[1:-1]
                notes.append(f"drivers[{index}].{old}: {old!r} is DriverLog's 2014 form ({_name(driver)}); "
                             f"today's is {today}")
    return notes


def twin_errors(document: Any) -> Iterator[str]:
    """A driver with both a modern key and its 2014 twin: which one means what would be a guess."""
    for index, driver in _drivers(document):
        for old, new in LEGACY_KEYS.items():
            if old in driver and new in driver:
                yield (f"drivers[{index}]: both {new!r} and its 2014 form {old!r} ({_name(driver)}); "
                       f"keep one")


def modern(driver: Mapping[str, Any]) -> dict[str, Any]:
    """One driver object in today's form: each 2014 key replaced, in place, by today's."""
    return dict(_today(key, value) for key, value in driver.items())


def upgrade(document: Mapping[str, Any]) -> dict[str, Any]:
    """The registry in today's form: the same drivers, the same meaning, the keys in their order."""
    out = dict(document)
    if isinstance(document.get("drivers"), list):
        out["drivers"] = [modern(d) if isinstance(d, dict) else d for d in document["drivers"]]
    return out
