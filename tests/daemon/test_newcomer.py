"""What a newcomer is told: the shipped demo registry against a real Gerrit is a mistake worth a warning."""

from __future__ import annotations

import json
import os
from pathlib import Path

from structlog.testing import capture_logs

from driverlog_daemon.config import Config, DatabaseConfig, GerritConfig, RegistryConfig
from driverlog_daemon.daemon.registry_follow import demo_registry_against_real_gerrit
from driverlog_daemon.daemon.service import Service
from driverlog_daemon.registry.checks import DEFAULT_REGISTRY_PATH


def test_the_demo_registry_is_flagged_only_against_a_gerrit_elsewhere(tmp_path: Path) -> None:
    shipped = str(DEFAULT_REGISTRY_PATH)
    assert demo_registry_against_real_gerrit(shipped, "review.opendev.org")
    assert not demo_registry_against_real_gerrit(shipped, "127.0.0.1")  # the demo and the tests
    assert not demo_registry_against_real_gerrit(shipped, "")  # no Gerrit: serving a file
    own = tmp_path / "default_data.json"
    own.write_text(json.dumps(json.loads(DEFAULT_REGISTRY_PATH.read_text())))
    assert not demo_registry_against_real_gerrit(str(own), "review.opendev.org")


def test_the_daemon_says_so_when_it_starts(tmp_path: Path) -> None:
    config = Config(gerrit=GerritConfig(host="review.example.org", username="ci", key_file=str(tmp_path / "k")),
                    registry=RegistryConfig(str(DEFAULT_REGISTRY_PATH)),
                    database=DatabaseConfig(str(tmp_path / "d.sqlite")))
    with capture_logs() as logs:
        service = Service(config, http=False)
    service.store.close()
    assert [e for e in logs if e["event"] == "demo_registry_in_use"]


def test_check_config_notes_an_http_port_that_cannot_be_bound_now(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f'[database]\npath = "{tmp_path / "d.sqlite"}"\n[http]\nport = {port}\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIVERLOG_")}
        done = subprocess.run([sys.executable, "-m", "driverlog_daemon", "check-config", "--config", str(config)],
                              capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("ok"), done.stdout + done.stderr
    assert done.stderr == (f"note: http.port: 127.0.0.1:{port} cannot be bound now (Address already in use): in "
                           "use by this daemon already running, or run will not start\n")
