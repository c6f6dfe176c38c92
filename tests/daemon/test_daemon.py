"""The real daemon as a subprocess against the project's Gerrit test server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.config import Config, WebhookConfig, load_config
from driverlog_daemon.testing import DATA, ROOT, wait_until
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import comment_event, state_event
from driverlog_daemon.testing.gerrit.setup import SSHEnv
from driverlog_daemon.testing.receiver import Receiver
from driverlog_daemon.testing.registry_server import RegistryServer


def ci_event(number: int, author: str = "acme-storage-ci", job: str = "acme-cinder-fc",
             project: str = "openstack/cinder") -> dict[str, Any]:
    text = f"Patch Set 1: Verified+1\n\nBuild succeeded.\n\n- {job} https://ci/{number} : SUCCESS in 1h"
    return comment_event(author=author, comment=text, number=number, patch_set=1, created_on=int(time.time()),
                         project=project)


class Daemon:
    def __init__(self, tmp: Path, env: SSHEnv, registry: Path, watchdog_usec: int | None = 200_000,
                 more_config: str = "", registry_lines: str | None = None) -> None:
        self.tmp = tmp
        self.db = tmp / "d.sqlite"
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.config = tmp / "driverlog.toml"
        g = env.config()
        self.config.write_text(f"""
[gerrit]
host = "{g.host}"
port = {g.port}
username = "driverlog"
key_file = "{g.key_file}"
known_hosts = "{g.known_hosts}"
stall_timeout_seconds = 60
[registry]
{registry_lines or f'path = "{registry}"'}
[database]
path = "{self.db}"
[http]
listen = "127.0.0.1"
port = 0
[log]
format = "json"
""" + more_config)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("DRIVERLOG_", "NOTIFY_", "WATCHDOG_"))}
        environ["NOTIFY_SOCKET"] = str(self.notify_path)
        if watchdog_usec:
            environ["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log = (tmp / "daemon.log").open("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "driverlog_daemon", "run", "--config", str(self.config)],
                                     env=environ, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)
        self.messages: list[str] = []
        self._arrived = threading.Condition()
        # systemd reads every notification as it comes; so does this (a queue left full would hold the sender)
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        while self.proc.poll() is None or self._pending_datagrams():
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._arrived:
                self.messages.append(message)
                self._arrived.notify_all()

    def _pending_datagrams(self) -> bool:
        try:
            return bool(self.notify.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:
            return False

    def receive(self, predicate: Any, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for m in self.messages:
                    if predicate(m):
                        self.messages.remove(m)
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching notification; got {self.messages}")
                self._arrived.wait(left)

    def log_events(self) -> list[dict[str, Any]]:
        self.log.flush()
        out = []
        for raw in (self.tmp / "daemon.log").read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"event": "raw", "text": raw})
        return out

    def port(self) -> int:
        assert wait_until(lambda: any(e.get("event") == "http_listening" for e in self.log_events()))
        return int(next(e["port"] for e in self.log_events() if e.get("event") == "http_listening"))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port()}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, line_prefix: str) -> float:
        _, body = self.get("/metrics")
        for raw in body.splitlines():
            if raw.startswith(line_prefix + " "):
                return float(raw.rsplit(" ", 1)[1])
        return 0.0

    def rows(self) -> list[tuple[Any, ...]]:
        return query(self.db, "SELECT change_number, ci_account FROM verifications ORDER BY change_number")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.log.flush()
            tail = (self.tmp / "daemon.log").read_text()[-6000:]
            raise AssertionError(f"the daemon did not stop within 10 s; its log ends:\n{tail}") from None
        finally:
            if not self.log.closed:
                self._drainer.join(5)
                self.notify.close()
                self.log.close()


@pytest.fixture
def daemon(tmp_path: Path, ssh_env: SSHEnv) -> Iterator[Daemon]:
    registry = tmp_path / "registry.json"
    shutil.copy(DATA, registry)
    d = Daemon(tmp_path, ssh_env, registry)
    yield d
    try:
        d.stop()
    except subprocess.TimeoutExpired:
        d.proc.kill()
        d.proc.wait()


def test_ready_then_watchdog_and_status(daemon: Daemon, ssh_env: SSHEnv) -> None:
    daemon.receive(lambda m: "READY=1" in m)
    daemon.receive(lambda m: m == "WATCHDOG=1")
    daemon.receive(lambda m: m == "WATCHDOG=1")
    status = daemon.receive(lambda m: m.startswith("STATUS=connected to 127.0.0.1:"))
    assert "events" in status and "verifications recorded" in status
    assert daemon.get("/healthz")[0] == 200
    assert daemon.stop() == 0


def test_sighup_with_a_broken_registry_keeps_the_old_one(daemon: Daemon, ssh_env: SSHEnv, tmp_path: Path) -> None:
    daemon.receive(lambda m: "READY=1" in m)
    registry = tmp_path / "registry.json"
    registry.write_text('{"projects": [], "drivers": [{"vendor": "x"}]}')
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: daemon.metric('driverlog_registry_reloads_total{result="error"}') == 1)
    assert daemon.metric("driverlog_registry_drivers") == 14
    status, body = daemon.get("/healthz")
    assert status == 200 and json.loads(body)["drivers"] == 14
    assert wait_until(lambda: ssh_env.server.stream_count == 1)
    ssh_env.server.push_event(ci_event(101))
    assert wait_until(lambda: daemon.rows() == [(101, "acme-storage-ci")])
    failures = [e for e in daemon.log_events() if e.get("event") == "registry_reload_failed"]
    assert failures and "drivers[0]" in " ".join(failures[0]["errors"])
    assert daemon.stop() == 0


def test_sighup_with_a_new_driver_records_for_it(daemon: Daemon, ssh_env: SSHEnv, tmp_path: Path) -> None:
    daemon.receive(lambda m: "READY=1" in m)
    doc = json.loads(DATA.read_text())
    doc["drivers"].append({"project_id": "openstack/nova", "vendor": "Newco", "name": "Newco Compute",
                           "ci": {"id": "newco-ci", "success_pattern": r"newco-tempest \S+ : SUCCESS",
                                  "failure_pattern": r"newco-tempest \S+ : FAILURE"}})
    (tmp_path / "registry.json").write_text(json.dumps(doc))
    assert wait_until(lambda: ssh_env.server.stream_count == 1)
    ssh_env.server.push_event(ci_event(201, author="newco-ci", job="newco-tempest", project="openstack/nova"))
    assert wait_until(lambda: daemon.metric('driverlog_events_total{type="comment-added"}') == 1)
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: daemon.metric('driverlog_registry_reloads_total{result="ok"}') == 1)
    assert daemon.metric("driverlog_registry_drivers") == 15
    ssh_env.server.push_event(ci_event(202, author="newco-ci", job="newco-tempest", project="openstack/nova"))
    assert wait_until(lambda: (202, "newco-ci") in daemon.rows())
    assert (201, "newco-ci") not in daemon.rows()  # before the reload it was not a CI account
    conn = sqlite3.connect(daemon.db)
    assert conn.execute("SELECT count(*) FROM drivers WHERE vendor = 'Newco'").fetchone()[0] == 1
    conn.close()
    assert daemon.stop() == 0


def test_sigterm_commits_every_received_event(daemon: Daemon, ssh_env: SSHEnv) -> None:
    daemon.receive(lambda m: "READY=1" in m)
    assert wait_until(lambda: ssh_env.server.stream_count == 1)
    events = [ci_event(300 + i) for i in range(200)]
    payload = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
    ssh_env.server.push_raw(payload)
    assert wait_until(lambda: daemon.metric("driverlog_stream_bytes_total") >= len(payload))
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    assert len(daemon.rows()) == 200
    assert "STOPPING=1" in daemon.receive(lambda m: "STOPPING=1" in m)


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_database_file_deleted_or_replaced_ends_the_daemon_non_zero(daemon: Daemon, ssh_env: SSHEnv,
                                                                      fault: str) -> None:
    # Its writes would go on into an inode nobody reads (or mix with another file's WAL) while pages answer 500:
    # it ends instead, and systemd starts it again on the file at the configured path.
    daemon.receive(lambda m: "READY=1" in m)
    assert wait_until(lambda: ssh_env.server.stream_count == 1)
    if fault == "deleted":
        daemon.db.unlink()
    else:
        other = daemon.tmp / "other.sqlite"
        sqlite3.connect(other).close()
        os.replace(other, daemon.db)
    assert daemon.proc.wait(timeout=15) == 1
    exiting = [e for e in daemon.log_events() if e["event"] == "daemon_exiting"]
    wanted = "was deleted or moved away" if fault == "deleted" else "was replaced by another file"
    assert exiting and exiting[0]["reason"] == f"the database file {wanted}", exiting


@pytest.fixture
def daemon_with_webhook(tmp_path: Path, ssh_env: SSHEnv) -> Iterator[tuple[Daemon, Receiver]]:
    registry = tmp_path / "registry.json"
    shutil.copy(DATA, registry)
    (tmp_path / "hook.secret").write_text("k\n")
    receiver = Receiver(b"k")
    d = Daemon(tmp_path, ssh_env, registry, more_config=f'[[webhook]]\nname = "chat"\nurl = "{receiver.url}"\n'
                                                         f'secret_file = "{tmp_path / "hook.secret"}"\n')
    yield d, receiver
    try:
        d.stop()
    except subprocess.TimeoutExpired:
        d.proc.kill()
        d.proc.wait()
    receiver.close()


def test_metrics_pass_promtool_check_metrics(daemon_with_webhook: tuple[Daemon, Receiver], ssh_env: SSHEnv) -> None:
    tool = _tool("promtool")
    daemon, receiver = daemon_with_webhook
    daemon.receive(lambda m: "READY=1" in m)
    assert wait_until(lambda: ssh_env.server.stream_count == 1)
    event = ci_event(400)
    event["change"]["branch"] = "stable/2025.1"
    ssh_env.server.push_event(event)
    merge = {"type": "change-merged", "eventCreatedOn": event["eventCreatedOn"] + 1, "change": event["change"],
             "patchSet": event["patchSet"], "submitter": {"username": "core"}}
    ssh_env.server.push_event(merge)
    assert wait_until(lambda: "driverlog_driver_release_last_mark_success_timestamp_seconds{" in
                      daemon.get("/metrics")[1])
    daemon.get("/")
    assert wait_until(lambda: 'driverlog_webhook_deliveries_total{hook="chat",outcome="delivered"} 1.0' in
                      daemon.get("/metrics")[1])  # the daemon's counter, through the web tier's scrape
    (got,) = receiver.deliveries()
    assert got.signature_ok and got.body["transition"]["to"] == "success" and got.body["transition"]["release"] == \
        "epoxy"
    body = daemon.get("/metrics")[1].encode()
    assert b"driverlog_ingest_latency_seconds_bucket" in body and b'route="/",status="200"' in body
    assert b'driverlog_webhook_outbox_pending{hook="chat"} 0.0' in body
    assert b'driverlog_webhook_outbox_oldest_pending_age_seconds{hook="chat"} 0.0' in body
    assert wait_until(lambda: json.loads(daemon.get("/healthz")[1]).get("webhooks", {}).get("chat") == {
        "pending": 0, "delivered": 1, "dead": 0, "oldest_pending_age_seconds": None})  # the daemon's next report
    proc = subprocess.run([tool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b"", proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[gerrit]\nprot = 1\n", {}, "gerrit.prot"),
        ("[gerrit]\nport = \"x\"\n", {}, "gerrit.port"),
        ("[gerrit]\nhost_key_policy = \"yolo\"\n", {}, "gerrit.host_key_policy"),
        ("[nope]\n", {}, "nope"),
        ("", {"DRIVERLOG_HTTP_PORT": "eighty"}, "http.port"),
        ("", {"DRIVERLOG_GERRIT_HOSTNAME": "x"}, "gerrit.hostname"),
        ("[gerrit]\nhost = \"h\"\nusername = \"u\"\nkey_file = \"/nonexistent/key\"\n", {}, "gerrit.key_file"),
        ("[registry]\npath = \"/nonexistent/registry.json\"\n", {}, "registry.path"),
    ],
)
def test_configuration_errors_exit_2_naming_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIVERLOG_")} | env
    for command in ("run", "check-config"):
        proc = subprocess.run([sys.executable, "-m", "driverlog_daemon", command, "--config", str(cfg)],
                              env=environ, capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"configuration error: {key}:"), proc.stderr


def test_unreadable_known_hosts_is_a_config_error(tmp_path: Path, ssh_env: SSHEnv) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[gerrit]\nhost = "127.0.0.1"\nusername = "u"\nkey_file = "{ssh_env.client_key_file}"\n'
                   f'known_hosts = "{tmp_path / "missing_known_hosts"}"\n')
    proc = subprocess.run([sys.executable, "-m", "driverlog_daemon", "check-config", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("configuration error: gerrit.known_hosts:")


def test_credentials_directory_provides_the_key(tmp_path: Path) -> None:
    (tmp_path / "gerrit-key").write_text("key")
    cfg = load_config(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.gerrit.key_file == str(tmp_path / "gerrit-key")
    cfg = load_config(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path), "DRIVERLOG_GERRIT_KEY_FILE": "/k"})
    assert cfg.gerrit.key_file == "/k"


def test_example_configuration_is_valid() -> None:
    cfg = load_config(ROOT / "deploy" / "driverlog.toml", env={})
    assert cfg.gerrit.port == 29418 and cfg.http.listen == "127.0.0.1"


def test_example_configuration_shows_every_key_with_its_default() -> None:
    """deploy/driverlog.toml says its values are the defaults unless marked "example": hold it to that, and to
    naming every key (set, or commented out)."""
    text = (ROOT / "deploy" / "driverlog.toml").read_text()
    shown: dict[tuple[str, str], str] = {}  # (section, key) -> the line
    section = ""
    for line in text.splitlines():
        if m := re.match(r"\[(\w+)\]", line):
            section = m[1]
        elif re.match(r"#?\s*\[\[webhook\]\]", line):
            section = "webhook"
        elif m := re.match(r"#?\s*(\w+)\s*=", line):
            shown[(section, m[1])] = line
    defaults = Config()
    values = tomllib.loads(text)
    for key in WebhookConfig._fields:  # the [[webhook]] tables: an example, commented out
        assert ("webhook", key) in shown, f"[[webhook]] {key} is missing from deploy/driverlog.toml"
    for name in defaults._fields:
        if name in ("source", "webhooks"):
            continue
        for key, default in getattr(defaults, name)._asdict().items():
            assert (name, key) in shown, f"[{name}] {key} is missing from deploy/driverlog.toml"
            line = shown[(name, key)]
            if line.startswith("#") or "# example" in line:
                continue
            value = values[name][key]
            assert (list(default) if isinstance(default, tuple) else default) == value, f"[{name}] {key}"


UNITS = ROOT / "deploy" / "systemd"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it)")
    return path


@pytest.mark.parametrize("name", ["driverlog-daemon.service", "driverlog-web.service"])
def test_systemd_unit_verifies(tmp_path: Path, name: str) -> None:
    tool = _tool("systemd-analyze")
    unit = tmp_path / name
    script = shutil.which("driverlog-daemon") or str(Path(sys.executable).parent / "driverlog-daemon")
    unit.write_text((UNITS / name).read_text().replace("/opt/driverlog/bin/driverlog-daemon", script))
    if name == "driverlog-web.service":  # verify checks the units it names: the daemon's beside it
        (tmp_path / "driverlog-daemon.service").write_text(
            (UNITS / "driverlog-daemon.service").read_text().replace("/opt/driverlog/bin/driverlog-daemon", script))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


@pytest.mark.parametrize("name", ["driverlog-daemon.service", "driverlog-web.service"])
def test_systemd_unit_exposure_at_most_2(name: str) -> None:
    tool = _tool("systemd-analyze")
    proc = subprocess.run([tool, "security", "--offline=yes", str(UNITS / name)], capture_output=True, text=True,
                          timeout=60, check=False)
    line = next(x for x in proc.stdout.splitlines() if "Overall exposure level" in x)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.0, line
    text = (UNITS / name).read_text()
    needed = ("DynamicUser=yes", "ConfigurationDirectory=driverlog", "Restart=on-failure", "RestartSec=")
    if name == "driverlog-daemon.service":
        needed += ("Type=notify", "WatchdogSec=", "StateDirectory=driverlog", "RuntimeDirectory=driverlog",
                   "LoadCredential=gerrit-key:")
    else:  # the web tier cannot write the database or the daemon's state
        needed += ("User=driverlog-daemon", "BindReadOnlyPaths=/var/lib/private/driverlog:/var/lib/driverlog",
                   "ReadOnlyPaths=/run/driverlog", "ReadWritePaths=/run/driverlog/metrics")
        assert "StateDirectory=" not in text and "LoadCredential" not in text
    for item in needed:
        assert item in text, item


def test_alert_rules_pass_promtool() -> None:
    tool = _tool("promtool")
    proc = subprocess.run([tool, "check", "rules", str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 11 rules found" in proc.stdout


def _promtool_test(tool: str, tmp_path: Path, tests: str) -> None:
    """``promtool test rules`` of the shipped alert rules with these ``tests:``; it must pass."""
    (tmp_path / "test.yml").write_text(f"""rule_files: ["{ROOT / 'deploy' / 'prometheus' / 'alerts.yml'}"]
evaluation_interval: 1m
tests:
{tests.strip(chr(10))}
""")
    proc = subprocess.run([tool, "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_failed_reload_fires_its_alert(tmp_path: Path) -> None:
    tool = _tool("promtool")
    description = ("A SIGHUP found an invalid or unreadable registry, or was cancelled with the database busy: the "
                   "old registry stays in force (registry_reload_failed in the journal says why). Fix the file and "
                   "reload again.")
    _promtool_test(tool, tmp_path, f"""
  - interval: 1m
    input_series:
      - series: 'driverlog_registry_reloads_total{{result="error",instance="d"}}'
        values: '0 0 0 1 1 1'
      - series: 'driverlog_registry_reloads_total{{result="ok",instance="d"}}'
        values: '0 1 2 3 4 5'
    alert_rule_test:
      - eval_time: 2m
        alertname: DriverlogRegistryReloadFailed
        exp_alerts: []
      - eval_time: 5m
        alertname: DriverlogRegistryReloadFailed
        exp_alerts:
          - exp_labels: {{severity: warning, instance: d, result: error}}
            exp_annotations:
              summary: "driverlog-daemon on d refused a registry reload"
              description: {json.dumps(description)}
""")


def test_a_failing_registry_source_fires_its_alert_until_it_answers_again(tmp_path: Path) -> None:
    tool = _tool("promtool")
    description = ("[registry] url is unreachable, answers an error, or serves an invalid registry: the registry in "
                   "force stays (last_fetch in /healthz and on /registry says why; registry_fetch_failed or "
                   "registry_reload_failed in the journal).")
    _promtool_test(tool, tmp_path, f"""
  - interval: 5m
    input_series:
      - series: 'driverlog_registry_fetches_total{{result="unchanged",instance="d"}}'
        values: '0 1 2 3 4 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 6'
      - series: 'driverlog_registry_fetches_total{{result="error",instance="d"}}'
        values: '0 0 0 0 0 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 18'
    alert_rule_test:
      - eval_time: 40m
        alertname: DriverlogRegistrySourceFailing
        exp_alerts: []
      - eval_time: 100m
        alertname: DriverlogRegistrySourceFailing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: d}}
            exp_annotations:
              summary: "driverlog-daemon on d has had no good answer from its registry URL for an hour"
              description: {json.dumps(description)}
      - eval_time: 120m
        alertname: DriverlogRegistrySourceFailing
        exp_alerts: []
""")


def test_a_registry_merged_upstream_shows_on_the_api_and_a_bad_one_says_why(tmp_path: Path,
                                                                           ssh_env: SSHEnv) -> None:
    served = RegistryServer(DATA.read_bytes()).start()
    daemon = Daemon(tmp_path, ssh_env, DATA, registry_lines=f'url = "{served.url}"\nfollow_project = "x/driverlog"\n'
                                                           "refresh_seconds = 0")
    try:
        daemon.receive(lambda m: "READY=1" in m)
        assert wait_until(lambda: ssh_env.server.stream_count == 1)
        doc = json.loads(DATA.read_text())
        doc["drivers"].append({"project_id": "openstack/nova", "vendor": "Newco", "name": "Newco Compute",
                               "releases": doc["drivers"][0]["releases"],  # an active one: the list shows it
                               "ci": {"id": "newco-ci", "success_pattern": "ok", "failure_pattern": "bad"}})
        served.publish(json.dumps(doc).encode())
        ssh_env.server.push_event(state_event("change-merged", 77, 1, project="x/driverlog"))
        assert wait_until(lambda: "Newco Compute" in daemon.get("/api/1.0/drivers")[1], timeout=15)
        registry = json.loads(daemon.get("/api/1.0/registry")[1])
        assert registry["total"] == 2 and registry["current"]["source"] == served.url
        assert [a["name"] for a in registry["versions"][0]["changes"]["drivers"]["added"]] == ["Newco Compute"]
        served.publish(b"{not json")
        ssh_env.server.push_event(state_event("change-merged", 78, 1, project="x/driverlog"))
        assert wait_until(lambda: json.loads(daemon.get("/api/1.0/registry")[1])["last_fetch"]["ok"] is False,
                          timeout=15)
        fetch = json.loads(daemon.get("/api/1.0/registry")[1])["last_fetch"]
        assert fetch["error"].startswith("invalid registry: $: invalid JSON")
        assert "Newco Compute" in daemon.get("/api/1.0/drivers")[1]  # the registry in force stayed
    finally:
        code = daemon.stop()
        served.stop()
    assert code == 0
