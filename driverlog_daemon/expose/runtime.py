"""The runtime directory the ingest daemon shares with its web tier.

``run`` owns it: it holds ``state.json`` (the daemon's live state — health, the stream's connection, the open gap —
rewritten every second, atomically) and ``metrics/`` (prometheus-client's multiprocess files, so that one scrape of
the web tier has every metric of both sides). The web tier only reads ``state.json``. Its place:
``$DRIVERLOG_RUNTIME_DIR``, else systemd's ``$RUNTIME_DIRECTORY``, else a fresh temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Live:
    """What the page's header shows that the database does not hold: the daemon's live state, as it hands it over."""

    gerrit: str = "not configured"  # connected, connecting, …
    newest_event_time: int | None = None
    open_gap: str | None = None  # a backfill gap not yet closed, in words
    importing: str | None = None  # a history import under way, in words ("importing history: 3 of 12 bindings")


@dataclass(frozen=True, slots=True)
class DaemonState:
    """All the daemon hands its web tier each second (``state.json``): its Gerrit server, its process health (as
    ``/healthz`` answers it), the live state of the page's header, and who wrote it when."""

    server: str
    healthy: bool
    health: dict[str, Any]
    live: Live
    pid: int = 0
    written_at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps({"server": self.server, "healthy": self.healthy, "health": self.health,
                           "live": {"gerrit": self.live.gerrit, "newest_event_time": self.live.newest_event_time,
                                    "open_gap": self.live.open_gap},
                           "pid": self.pid, "written_at": self.written_at}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DaemonState | None:
        """The state written by :meth:`to_json`; None for anything else (a file half-made by hand, another
        version's)."""
        try:
            s = json.loads(data)
            live = s["live"]
            return cls(str(s["server"]), bool(s["healthy"]), dict(s["health"]),
                       Live(str(live["gerrit"]), live["newest_event_time"], live["open_gap"]),
                       int(s["pid"]), float(s["written_at"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


ENV = "DRIVERLOG_RUNTIME_DIR"
STATE = "state.json"
REGISTRY = "registry.json"  # the registry in force: the web tier shows what the daemon matches with
METRICS = "metrics"
#: A state older than this is a daemon that stopped reporting (it writes one every second).
STATE_FRESH_SECONDS = 10.0


def prepare(path: str | Path | None = None) -> tuple[Path, bool]:
    """Make the runtime directory ready for a new daemon (an empty ``metrics/``) and point this process and its
    children at it (``$DRIVERLOG_RUNTIME_DIR``, ``$PROMETHEUS_MULTIPROC_DIR``). Call before importing
    prometheus_client: it reads the multiprocess directory when imported. Returns the directory and whether it
    was made here (a temporary one, for the caller to remove)."""
    fresh = False
    if path is None:
        path = os.environ.get(ENV) or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not path:
        path, fresh = tempfile.mkdtemp(prefix="driverlog-run-"), True
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    metrics = root / METRICS
    shutil.rmtree(metrics, ignore_errors=True)  # counters of a previous daemon are not this one's
    metrics.mkdir()
    (root / STATE).unlink(missing_ok=True)
    (root / REGISTRY).unlink(missing_ok=True)
    os.environ[ENV] = str(root)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    return root, fresh


def current() -> Path | None:
    """The runtime directory this process was started with (the web tier under ``run``), or None (``serve``
    alone)."""
    path = os.environ.get(ENV)
    return Path(path) if path else None


def _replace(root: Path, name: str, data: bytes) -> None:
    tmp = root / f".{name}.{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, root / name)


def write_registry(root: Path, data: bytes) -> None:
    """The registry the daemon has validated and uses (its exact bytes), for the web tier; replaced atomically."""
    _replace(root, REGISTRY, data)


def write_state(root: Path, state: DaemonState) -> None:
    """Replace ``state.json`` atomically (a reader sees the old state or the new one, never half), signed with this
    process's pid and the time."""
    from dataclasses import replace

    _replace(root, STATE, replace(state, pid=os.getpid(), written_at=time.time()).to_json())


def read_state(root: Path) -> DaemonState | None:
    """The daemon's last state, or None when there is none (yet) or it cannot be read."""
    try:
        return DaemonState.from_json((root / STATE).read_bytes())
    except OSError:
        return None


def live_from_file(reader: Any, importing: str | None) -> Live:
    """For ``serve`` alone (no daemon beside it): the stream's state as the file last recorded it."""
    import sqlite3

    from driverlog_daemon.parse.bounds import utc_text
    from driverlog_daemon.store import reads

    try:
        with reader.snapshot() as conn:
            stream = reads.last_stream(conn)
    except sqlite3.Error:
        stream = None
    if stream is None:
        return Live(gerrit="not configured", importing=importing)
    server, newest, written, gaps = stream
    when = utc_text(int(written), "%Y-%m-%d %H:%M UTC")
    return Live(gerrit=f"{server}, as the file says (no daemon here; written {when})", newest_event_time=newest,
                open_gap=f"{gaps} open in the file" if gaps else None, importing=importing)
