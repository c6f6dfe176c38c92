"""Every bad file a command is given answers in one line, ``PATH: what is wrong``, with a non-zero status and no
traceback; a recording that breaks off still records what came before the break."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from driverlog_daemon.store.store import Store
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import ci_line


def run(cwd: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIVERLOG_")}
    done = subprocess.run([sys.executable, "-m", "driverlog_daemon", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "latin1.toml").write_bytes(b'[database]\npath = "x.sqlite"\n# caf\xe9\n')
    (tmp_path / "foreign.sqlite").write_text("not a database\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "fake.gz").write_text("plain text\n")
    (tmp_path / "foreign.toml").write_text(f'[database]\npath = "{tmp_path / "foreign.sqlite"}"\n')
    (tmp_path / "folder.toml").write_text(f'[database]\npath = "{tmp_path / "folder"}"\n')
    (tmp_path / "port.toml").write_text('[database]\npath = "x.sqlite"\n[http]\nport = 99999\n')
    (tmp_path / "listen.toml").write_text('[database]\npath = "x.sqlite"\n[http]\nlisten = "no.such.host.invalid"\n')
    (tmp_path / "url.toml").write_text('[database]\npath = "x.sqlite"\n[registry]\nurl = "http://127.0.0.1:1/r.json"\n')
    (tmp_path / "scheme.toml").write_text('[registry]\nurl = "ftp://example.org/r.json"\n')
    return tmp_path


CASES = [
    (("check-config", "--config", "latin1.toml"), 2, "latin1.toml: not UTF-8 text (byte 34 is 0xe9)"),
    (("run", "--config", "latin1.toml"), 2, "latin1.toml: not UTF-8 text"),
    (("check-config", "--config", "port.toml"), 2, "http.port: must be a TCP port, 0 to 65535, got 99999"),
    (("run", "--config", "port.toml"), 2, "http.port: must be a TCP port, 0 to 65535, got 99999"),
    (("check-config", "--config", "listen.toml"), 2, "http.listen: 'no.such.host.invalid' is not an address"),
    (("check-config", "--config", "url.toml"), 2, "configuration error: registry.url: http://127.0.0.1:1/r.json is "
     "not a valid registry: cannot fetch: http://127.0.0.1:1/r.json: [Errno 111] Connection refused; and no copy kept"),
    (("run", "--config", "url.toml"), 2, "configuration error: registry.url: http://127.0.0.1:1/r.json is not a "
     "valid registry: cannot fetch: http://127.0.0.1:1/r.json: [Errno 111] Connection refused; and no copy kept"),
    (("run", "--config", "scheme.toml"), 2, "registry.url: must be an https://, http:// or file:// URL"),
    (("health", "--config", "foreign.toml"), 1, "foreign.sqlite: not a SQLite database"),
    (("health", "--config", "folder.toml"), 1, "folder: is a directory, not a database file"),
    (("health", "--database", "foreign.sqlite"), 1, "foreign.sqlite: not a SQLite database"),
    (("export", "verifications", "--database", "foreign.sqlite"), 1, "foreign.sqlite: not a SQLite database"),
    (("export", "marks", "--database", "folder"), 1, "folder: is a directory, not a database file"),
    (("replay", "--database", "foreign.sqlite", "fake.gz"), 1, "foreign.sqlite: not a SQLite database"),
    (("replay", "--database", "new.sqlite", "fake.gz"), 1, "fake.gz: not a valid gzip file"),
    (("replay", "--database", "new.sqlite", "folder"), 1, "folder: is a directory, not a recording"),
    (("replay", "--database", "missing/dir/x.sqlite", "fake.gz"), 1,
     "missing/dir/x.sqlite: cannot be created: its directory missing/dir does not exist"),
    (("replay", "--database", "new.sqlite", "nowhere.jsonl"), 1, "nowhere.jsonl: file not found"),
]


@pytest.mark.parametrize(("args", "status", "line"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_file_is_one_line_and_a_status(scratch: Path, args: tuple[str, ...], status: int, line: str) -> None:
    code, out = run(scratch, *args)
    assert code == status, out
    assert line in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert (scratch / "foreign.sqlite").read_text() == "not a database\n"  # a foreign file is never written


def test_a_truncated_recording_records_what_came_before_the_break(tmp_path: Path) -> None:
    whole = gzip.compress(b"".join(ci_line(n) for n in range(1, 2001)))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])  # the rest of the download never came
    Store(tmp_path / "d.sqlite").close()
    code, out = run(tmp_path, "replay", "--database", "d.sqlite", "cut.jsonl.gz")
    assert code == 1 and "Traceback" not in out, out
    assert out.strip().startswith("cut.jsonl.gz: truncated") and "lines before it were read" in out, out
    recorded = query(tmp_path / "d.sqlite", "SELECT count(*) FROM verifications")[0][0]
    assert 0 < recorded < 2000  # what the readable part held; nothing at all before


def test_a_port_in_use_is_named_when_run_cannot_start(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    (tmp_path / "c.toml").write_text(f'[database]\npath = "x.sqlite"\n[http]\nport = {port}\n[log]\nformat = "json"\n')
    try:
        code, out = run(tmp_path, "run", "--config", "c.toml")
    finally:
        taken.close()
    assert code == 1 and "Traceback" not in out, out
    failed = [line for line in out.splitlines() if "startup_failed" in line]
    assert failed and f"127.0.0.1:{port}" in failed[0] and "in use" in failed[0], out


def test_a_binary_file_is_summarised_not_one_warning_a_line(tmp_path: Path) -> None:
    (tmp_path / "binary.jsonl").write_bytes(b"".join(bytes([i % 251 + 1]) * 40 + b"\n" for i in range(3000)))
    (tmp_path / "c.toml").write_text('[database]\npath = "d.sqlite"\n[log]\nformat = "json"\n')
    code, out = run(tmp_path, "replay", "--config", "c.toml", "binary.jsonl")
    assert code == 0, out
    warnings = [line for line in out.splitlines() if "malformed_line" in line]
    assert 0 < len(warnings) <= 20, len(warnings)
    summary = next(line for line in out.splitlines() if line.startswith("malformed lines:"))
    counted = sum(int(n.replace(",", "")) for n in re.findall(r" ([\d,]+)(?:,|$)", summary))
    assert counted > 2000, summary  # the summary counts every one of them
