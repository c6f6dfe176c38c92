"""Applying a registry to the file, in one transaction: the drivers synced, the registry recorded as a version when
it differs from the last one applied, and the history import it calls for planned (docs/history.md).

The registry last applied is the file's own record (``registry_versions``), so a change is found whether it came by
SIGHUP, by a restart with another file, or while the daemon was down. The first start with a Gerrit server plans
the first import (every binding); afterwards each change plans an import of the bindings whose meaning changed
(:mod:`registry_changes`), nothing for the others.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from driverlog_daemon.logs import get_logger
from driverlog_daemon.registry.changes import RegistryChanges, compare, describe
from driverlog_daemon.registry.load import Registry, registry_from_valid_bytes
from driverlog_daemon.store import import_ledger, import_plan
from driverlog_daemon.store.store import Store

log = get_logger("driverlog.registry")


class HistorySettings(NamedTuple):
    """What a daemon imports (``[history]``); ``first``: a Gerrit server is configured, so the first start's
    import can run; ``gerrit_now``: Gerrit's clock as far as the daemon knows (rows updated since are read again)."""

    days: float
    mark_search_days: float
    first: bool
    gerrit_now: int
    queries: bool = True  # False ([history] enabled = false): a change only judges again what the file holds


class Applied(NamedTuple):
    version: int | None  # the registry_versions id recorded (None: the same registry as the last one)
    changes: RegistryChanges | None  # None: nothing applied before
    import_id: int | None  # the import planned


def apply(store: Store, registry: Registry, raw: bytes, source: str, history: HistorySettings | None,
          now: float) -> Applied:
    """Apply ``registry`` (read from ``raw``) to the file; with ``history`` (a daemon), plan its import."""
    with store.transaction():
        ids = store.sync_in_transaction(registry)
        conn = store.conn
        latest = import_ledger.latest_version(conn)
        digest = hashlib.sha256(raw).hexdigest()
        previous: Registry | None = None
        if latest is not None:
            try:
                previous = registry_from_valid_bytes(latest[2], "<registry applied before>")
            except (ValueError, KeyError, TypeError) as exc:  # written by another version: all is new then
                log.warning("registry_version_unreadable", version=latest[0], error=f"{type(exc).__name__}: {exc}")
        changes = None if latest is None else compare(previous, registry)
        version = None
        if latest is None or latest[1] != digest:
            version = import_ledger.record_version(
                conn, raw, source, (len(registry.drivers), registry.ci_bindings, len(registry.by_account)), now)
        if changes is not None:
            import_ledger.forget(conn, changes.accounts_gone, changes.projects_gone)
        import_id = None
        if history is not None:
            if history.first and history.queries and not import_ledger.first_planned(conn):
                import_ledger.supersede(conn, now)
                plan = import_plan.first(registry, ids, now, history.days, history.mark_search_days)
                import_id = import_ledger.plan(conn, plan, version, now)
            elif changes is not None and changes.bindings:
                plan = import_plan.after_change(registry, changes, ids, import_ledger.imported(conn), now,
                                                 history.days, history.mark_search_days, history.gerrit_now)
                if not history.queries:
                    plan = plan._replace(work=tuple(w for w in plan.work if w.kind == "rejudge"))
                import_id = import_ledger.plan(conn, plan, version, now)
    if changes is not None and not changes.empty:
        log.info("registry_changes", bindings=len(changes.bindings), removed=len(changes.removed),
                 releases=list(changes.releases), import_id=import_id, changes=describe(changes)[:50])
    return Applied(version, changes, import_id)
