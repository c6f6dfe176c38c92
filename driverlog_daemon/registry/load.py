"""The driver registry: DriverLog's ``default_data.json``, validated and indexed by CI account.

Loading goes, in order: bytes -> JSON (duplicate keys rejected) -> JSON Schema -> semantic checks. Every
error found is reported at once, each as ``<json path>: <reason>``. The result is an immutable
:class:`Registry` whose main index maps a CI account (a Gerrit username) to the drivers it reports for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from driverlog_daemon.registry import checks, legacy
from driverlog_daemon.registry.checks import SCHEMA_PATH


class RegistryError(Exception):
    """The registry cannot be used. ``errors`` holds every problem found, one ``path: reason`` string each."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


#: OpenStack's published series numbers by release name (https://releases.openstack.org): stable branches are
#: named after them since 2023 (``stable/2024.1``). Used for a registry release without a ``series`` key.
OPENSTACK_SERIES: Mapping[str, str] = MappingProxyType({
    "Antelope": "2023.1", "Bobcat": "2023.2", "Caracal": "2024.1", "Dalmatian": "2024.2", "Epoxy": "2025.1",
    "Flamingo": "2025.2", "Gazpacho": "2026.1", "Hibiscus": "2026.2",
})


class Release(NamedTuple):
    id: str
    wiki: str
    start: datetime  # midnight UTC of the release's start date
    active: bool = False
    series: str | None = None  # the registry's ``series`` key, else OpenStack's published number, else None
    start_epoch: int = 0  # ``start`` in seconds since the epoch (set by the loader)


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


class CIBinding(NamedTuple):
    """A driver's ``ci`` block: the Gerrit username that reports for it and its two patterns, or none (a 2014
    ``ci_id``, or a ``ci`` without patterns): then the CI's Verified vote decides (docs/matching.md).

    The patterns are compiled when first used: a start-up that matches nothing compiles none.
    """

    account: str
    success_pattern: str | None = None
    failure_pattern: str | None = None

    @property
    def by_vote(self) -> bool:
        """Judged by its Verified vote rather than by patterns."""
        return self.success_pattern is None or self.failure_pattern is None

    @property
    def success(self) -> re.Pattern[str]:
        return _compiled(self.success_pattern or "")

    @property
    def failure(self) -> re.Pattern[str]:
        return _compiled(self.failure_pattern or "")


class Driver(NamedTuple):
    project_id: str
    vendor: str
    name: str
    description: str = ""
    wiki: str = ""
    repo: str | None = None
    releases: tuple[str, ...] = ()
    maintainers: tuple[Mapping[str, str], ...] = ()
    ci: CIBinding | None = None
    verification: str | None = None  # DriverLog 2014's level: self_verification, 3rd_party_verification, …

    @property
    def key(self) -> tuple[str, str, str]:
        """DriverLog's natural key: (project_id, vendor, name)."""
        return (self.project_id, self.vendor, self.name)

    @property
    def review_project(self) -> str:
        """The Gerrit project whose changes this driver's CI reports on: ``repo`` if set, else ``project_id``."""
        return self.repo or self.project_id


class Registry(NamedTuple):
    projects: Mapping[str, str]  # project id -> name
    releases: tuple[Release, ...]
    drivers: tuple[Driver, ...]
    by_account: Mapping[str, tuple[Driver, ...]]  # CI account -> the drivers it reports for
    releases_by_lower_id: Mapping[str, Release]  # release id in lower case -> release
    source: str = ""
    #: what may follow ``stable/`` or ``unmaintained/`` in a branch name -> release: the id in lower case, and
    #: the series number (``2024.1``)
    releases_by_branch_name: Mapping[str, Release] = MappingProxyType({})
    #: the Gerrit projects the CI-bound drivers report on (whose change state is kept)
    review_projects: frozenset[str] = frozenset()
    #: one note per driver and DriverLog 2014 key it uses (legacy.legacy_notes): ``validate`` warns
    legacy: tuple[str, ...] = ()

    @property
    def ci_accounts(self) -> frozenset[str]:
        return frozenset(self.by_account)

    @property
    def ci_bindings(self) -> int:
        return sum(len(drivers) for drivers in self.by_account.values())

    def compile_patterns(self) -> None:
        """Compile every CI pattern now (they are otherwise compiled when first used)."""
        for driver in self.drivers:
            if driver.ci is not None and not driver.ci.by_vote:
                _ = driver.ci.success, driver.ci.failure

    def summary(self) -> str:
        return f"{len(self.drivers)} drivers, {self.ci_bindings} CI bindings, {len(self.by_account)} CI accounts"


# --------------------------------------------------------------------------------------------------- loading


def load_registry(path: str | Path, *, remember: bool = False, strict: bool = False) -> Registry:
    """Read, validate and index the registry at ``path``; raise :class:`RegistryError` with every problem.

    ``remember``: skip the checks of a registry already found valid (the same bytes, schema and version),
    and remember one found valid now (see :func:`validated_cache_dir`). ``strict``: DriverLog's 2014 keys are
    errors, not warnings.
    """
    return read_registry(path, remember=remember, strict=strict)[0]


def read_registry(path: str | Path, *, remember: bool = False, strict: bool = False) -> tuple[Registry, bytes]:
    """:func:`load_registry`, and the bytes it was read from (the daemon hands exactly those to its web tier)."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RegistryError(source, ["file not found"]) from None
    except IsADirectoryError:
        raise RegistryError(source, ["is a directory, not a file"]) from None
    except OSError as exc:
        raise RegistryError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    return registry_from_bytes(data, source, remember=remember, strict=strict), data


def registry_from_bytes(data: bytes, source: str, *, remember: bool = False, strict: bool = False) -> Registry:
    """:func:`load_registry` of bytes read elsewhere (a registry URL's answer); ``source`` names them."""
    if not remember or strict:
        return parse_registry(data, source=source, strict=strict)
    marker = _validated_marker(data)
    try:
        known = marker is not None and marker.exists()
    except OSError:  # a cache this user cannot even look into (another's HOME): the checks are run, that is all
        known = False
    if known:
        return _build(json.loads(data), source)
    registry = parse_registry(data, source=source)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass  # a cache that cannot be written only costs the checks next time
    return registry


def registry_from_valid_bytes(data: bytes, source: str) -> Registry:
    """A registry from bytes known to have passed every check (one the file recorded as applied), unchecked."""
    return _build(json.loads(data), source)


def validated_cache_dir() -> Path | None:
    """Where the digests of registries found valid are remembered: ``$DRIVERLOG_CACHE_DIR``, systemd's
    ``$CACHE_DIRECTORY`` (``CacheDirectory=``), else ``$XDG_CACHE_HOME/driverlog-daemon`` or
    ``~/.cache/driverlog-daemon``. ``DRIVERLOG_CACHE_DIR=`` (empty) turns the cache off."""
    explicit = os.environ.get("DRIVERLOG_CACHE_DIR")
    if explicit is not None:
        return Path(explicit) if explicit else None
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "driverlog-daemon"


def _validated_marker(data: bytes) -> Path | None:
    """The file whose existence says that these registry bytes passed every check of this code and schema."""
    directory = validated_cache_dir()
    if directory is None:
        return None
    from driverlog_daemon import __version__

    code = b"".join(Path(m.__file__ or "").read_bytes() for m in (sys.modules[__name__], checks, legacy))
    decides = __version__.encode() + code + SCHEMA_PATH.read_bytes()  # the checking code and the schema
    digest = hashlib.sha256(hashlib.sha256(decides).digest() + data).hexdigest()
    return directory / f"registry-valid-{digest}"


def parse_registry(data: bytes | str, source: str = "<registry>", *, strict: bool = False) -> Registry:
    errors: list[str] = []
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise RegistryError(source, [f"$: not UTF-8 ({exc.reason} at byte {exc.start})"]) from None
    try:
        document = json.loads(text, object_pairs_hook=checks.DuplicateCheckingDict.from_pairs)
    except json.JSONDecodeError as exc:
        raise RegistryError(source, [f"$: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]) from None
    errors.extend(checks.duplicate_key_errors(document, ""))
    errors.extend(checks.schema_errors(document))
    errors.extend(checks.semantic_errors(document))
    if strict:
        errors.extend(legacy.legacy_notes(document))
    if errors:
        raise RegistryError(source, errors)
    return _build(document, source)


def _build(document: Mapping[str, Any], source: str) -> Registry:
    releases = tuple(
        Release(id=r["id"], wiki=r["wiki"], start=start, active=bool(r.get("active", False)),
                series=r.get("series") or OPENSTACK_SERIES.get(r["id"]), start_epoch=int(start.timestamp()))
        for r in document.get("releases", []) for start in [checks.parse_start_date(r["start"])]
    )
    by_branch_name = {r.series: r for r in releases if r.series}
    by_branch_name.update({r.id.lower(): r for r in releases})
    drivers: list[Driver] = []
    by_account: dict[str, list[Driver]] = {}
    for raw in map(legacy.modern, document["drivers"]):
        ci = None
        if "ci" in raw:
            c = raw["ci"]
            ci = CIBinding(account=c["id"], success_pattern=c.get("success_pattern"),
                           failure_pattern=c.get("failure_pattern"))
        driver = Driver(
            project_id=raw["project_id"],
            vendor=raw["vendor"],
            name=raw["name"],
            description=raw.get("description", ""),
            wiki=raw.get("wiki", ""),
            repo=raw.get("repo"),
            releases=tuple(raw.get("releases", ())),
            maintainers=tuple(MappingProxyType(dict(m)) for m in raw.get("maintainers", ())),
            ci=ci,
            verification=raw.get("verification"),
        )
        drivers.append(driver)
        if ci is not None:
            by_account.setdefault(ci.account, []).append(driver)
    return Registry(
        projects=MappingProxyType({p["id"]: p["name"] for p in document["projects"]}),
        releases=releases,
        drivers=tuple(drivers),
        by_account=MappingProxyType({k: tuple(v) for k, v in by_account.items()}),
        releases_by_lower_id=MappingProxyType({r.id.lower(): r for r in releases}),
        source=source,
        releases_by_branch_name=MappingProxyType(by_branch_name),
        review_projects=frozenset(d.review_project for ds in by_account.values() for d in ds),
        legacy=tuple(legacy.legacy_notes(document)),
    )
