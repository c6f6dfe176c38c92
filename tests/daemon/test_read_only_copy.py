"""A copy of the database on read-only media (a mount nobody, root included, can write): ``health``, ``export``
and ``serve`` read it (SQLite's immutable mode, since WAL's -shm cannot be made there); a copy whose -wal still
holds commits is refused in one line rather than read without them."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing.db import read_only_media
from driverlog_daemon.testing.site import NOW, merged, vote

FC = "Acme Volume Driver (FC)"


@pytest.fixture
def media(tmp_path: Path, registry: Registry) -> tuple[Path, list[str]]:
    folder = tmp_path / "media"
    folder.mkdir()
    with Store(folder / "driverlog.sqlite") as store:  # closed: checkpointed, no -wal or -shm beside it
        store.sync_drivers(registry)
        store.commit(Batch("stream", [vote(registry, FC, 100, 2, NOW - 3600, "success", "Gazpacho")],
                           changes=[merged(100, 2, NOW - 1800)]))
    wrap = read_only_media(folder)
    if wrap is None:
        pytest.skip("cannot mount a folder read-only here (needs `unshare -m` as root, or user namespaces)")
    return folder, wrap


def run(wrap: list[str], *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIVERLOG_")}
    done = subprocess.run([*wrap, sys.executable, "-m", "driverlog_daemon", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


def test_health_and_export_read_a_copy_on_read_only_media(media: tuple[Path, list[str]]) -> None:
    folder, wrap = media
    db = str(folder / "driverlog.sqlite")
    code, out = run(wrap, "health", "--database", db)
    assert code == 0 and FC in out and "100%" in out, out
    code, out = run(wrap, "export", "verifications", "--database", db)
    assert code == 0 and out.count("\n") == 2 and "Gazpacho" in out, out  # a header and the one verification
    assert sorted(p.name for p in folder.iterdir()) == ["driverlog.sqlite"]  # nothing was made beside it


def test_a_copy_whose_wal_holds_commits_is_refused_in_one_line(media: tuple[Path, list[str]],
                                                                 tmp_path: Path) -> None:
    folder, wrap = media
    db = folder / "driverlog.sqlite"
    live = tmp_path / "live.sqlite"
    shutil.copy(db, live)
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("UPDATE drivers SET name = name")  # a commit that stays in the -wal
    shutil.copy(live, db)
    shutil.copy(f"{live}-wal", f"{db}-wal")  # copied while the writer holds it, as a careless backup does
    conn.close()
    code, out = run(wrap, "health", "--database", str(db))
    assert code == 1 and out.count("\n") == 1 and "Traceback" not in out, out
    assert out.startswith(f"{db}: read-only here with commits in driverlog.sqlite-wal"), out


def test_the_commands_that_write_refuse_read_only_media_in_one_line(media: tuple[Path, list[str]],
                                                                      tmp_path: Path) -> None:
    folder, wrap = media
    db = folder / "driverlog.sqlite"
    recording = tmp_path / "events.jsonl"
    recording.write_text("")
    code, out = run(wrap, "replay", str(recording), "--database", str(db))
    assert code == 1 and out == f"{db}: read-only here: the daemon and replay need to write it (serve, health and " \
                                "export only read)\n", out
    config = tmp_path / "run.toml"
    config.write_text(f'[database]\npath = "{folder / "new.sqlite"}"\n[http]\nenabled = false\n')
    code, out = run(wrap, "run", "--config", str(config))
    assert code == 2 and out.count("\n") == 1 and "Traceback" not in out, out
    assert f"database.path: directory {folder} is not writable" in out, out
