"""The README's Deploying steps, followed as written in a scratch root, as far as a machine without systemd as PID 1
allows: each shell line of the README runs (``sudo`` dropped, absolute paths under the root); the few that need
systemd or the network are replaced by what they stand for, named below; a line this test does not know fails it,
so the README cannot drift from what was tried.

What the unit's systemd would do is done by hand: the state directory made for the service's user, the key handed
over as a credential, and ``run`` started as an unprivileged user (``nobody``, as ``DynamicUser=`` gives one) with
the unit's environment, against the Gerrit SSH test server whose host key ``ssh-keyscan`` fetched.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from driverlog_daemon.testing import DATA, ROOT, UPSTREAM, wait_until
from driverlog_daemon.testing.gerrit import SSHEnv, start_in
from driverlog_daemon.testing.net import free_port, http_get

SCRIPT = Path(sys.executable).parent / "driverlog-daemon"
NOBODY = 65534


def readme_steps() -> list[str]:
    """The shell lines of the README's Deploying block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Deploying"):]
    block = block[block.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


# A step this test cannot take here, and what it does instead (asserted below, after the steps).
INSTEAD = {
    "python3 -m venv /opt/driverlog": "the suite's virtualenv is the installation",
    "/opt/driverlog/bin/pip install /path/to/driverlog-daemon": "the suite's virtualenv is the installation",
    "systemctl daemon-reload && systemctl enable --now driverlog-daemon":
        "systemd-analyze verify of the installed unit, then run as the unit would start it",
    "systemctl status driverlog-daemon": "the STATUS line of the daemon's readiness is not sent without systemd",
    "journalctl -u driverlog-daemon -f": "the daemon's log is read from its stdout",
    "curl -s http://127.0.0.1:8080/healthz": "/healthz is asked on the configured port",
}


class Scratch:
    def __init__(self, tmp: Path, gerrit: SSHEnv) -> None:
        self.root = tmp / "root"
        self.cwd = tmp / "checkout"  # where the README's relative paths (deploy/…, default_data.json) are
        self.gerrit = gerrit
        self.http_port = free_port()
        for path in (self.root / "opt" / "driverlog", self.root / "etc" / "systemd" / "system", self.cwd,
                     self.root / "var" / "lib"):
            path.mkdir(parents=True)
        for name in ("README.md", "docs", "deploy"):
            (self.cwd / name).symlink_to(ROOT / name)
        shutil.copy(UPSTREAM if UPSTREAM.exists() else DATA, self.cwd / "default_data.json")  # DriverLog's file

    def path(self, text: str) -> str:
        """Absolute paths of the installation, moved under the scratch root."""
        text = text.replace("/opt/driverlog/bin/driverlog-daemon", str(SCRIPT))
        return re.sub(r"(?<![\w.])/(etc|opt|var)/", lambda m: f"{self.root}/{m.group(1)}/", text)

    def step(self, line: str) -> str | None:
        """The shell command this README line becomes here, or None when it is one of INSTEAD."""
        line = unprivileged(line)
        if line in INSTEAD:
            return None
        if line.startswith("ssh-keyscan "):  # the test server in place of review.example.org
            line = re.sub(r"-p \d+ \S+", f"-p {self.gerrit.server.port} {self.gerrit.server.host}", line)
        if "sudoedit " in line:  # the edit a deployer makes: which Gerrit, which account, which port
            line = line.replace("&& sudoedit /etc/driverlog/driverlog.toml", "").strip()
            return self.path(line) + " && " + self.edit_command()
        return self.path(line)

    def edit_command(self) -> str:
        config = self.root / "etc" / "driverlog" / "driverlog.toml"
        edits = {r'^host = "[^"]*"': f'host = "{self.gerrit.server.host}"',
                 r"^port = 29418": f"port = {self.gerrit.server.port}",
                 r"^port = 8080": f"port = {self.http_port}"}
        program = (f"import re,pathlib;p=pathlib.Path({str(config)!r});t=p.read_text()\n"
                   f"for a,b in {edits!r}.items(): t=re.sub(a,b,t,count=1,flags=re.M)\n"
                   f"p.write_text(re.sub(r'\"/(etc|var)/', lambda m: '\"{self.root}/'+m.group(1)+'/', t))")
        return f"{sys.executable} -c {shlex.quote(program)}"


def unprivileged(line: str) -> str:
    return re.sub(r"(^|\|\s*|&&\s*)sudo ", r"\1", line)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A scratch folder that any user may traverse (pytest's own is private to its user: the service's user must
    reach its configuration, as it would in /etc)."""
    folder = Path(tempfile.mkdtemp(prefix="driverlog-deploy-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def gerrit(tmp_path: Path) -> Iterator[SSHEnv]:
    (tmp_path / "gerrit").mkdir()
    env = start_in(tmp_path / "gerrit")
    yield env
    env.server.stop()


def nobody_can_run_python() -> bool:
    """Whether an unprivileged user can start this interpreter, and it a child of its own (the web tier): not when
    it lives in root's home, as a pyenv build may; the service's user is then stood in for by this one."""
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                            "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"],
                           capture_output=True, timeout=30, check=False, cwd="/")
    return probe.returncode == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(120)
def test_the_deploying_steps_work_as_written(open_tmp: Path, tmp_path: Path, gerrit: SSHEnv) -> None:
    for tool in ("ssh-keygen", "ssh-keyscan"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian package openssh-client)")
    scratch = Scratch(open_tmp, gerrit)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIVERLOG_", "NOTIFY_SOCKET"))}
    steps = readme_steps()
    skipped = []
    for line in steps:
        command = scratch.step(line)
        if command is None:
            skipped.append(unprivileged(line))
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=scratch.cwd, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"README step failed: {line}\n  as: {command}\n{done.stdout}{done.stderr}"
        if "check-config" in line:
            assert done.stdout.rstrip().endswith("ok"), done.stdout
            assert "note: database.path" in done.stderr  # systemd makes the state directory; not there yet
    assert sorted(skipped) == sorted(INSTEAD), "a step this test stands in for is no longer in the README"

    etc = scratch.root / "etc" / "driverlog"
    # the modes DynamicUser= needs: the directory and what the service reads are readable by anyone, the key not
    assert mode(etc) == 0o755
    for name in ("driverlog.toml", "known_hosts", "default_data.json"):
        assert mode(etc / name) == 0o644, name
    assert mode(etc / "gerrit-key") & 0o077 == 0
    assert (scratch.root / "etc" / "systemd" / "system" / "driverlog-daemon.service").is_file()
    assert (scratch.root / "opt" / "driverlog" / "README.md").is_file()

    unit = (scratch.root / "etc" / "systemd" / "system" / "driverlog-daemon.service").read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze:
        checked = tmp_path / "verify" / "driverlog-daemon.service"
        checked.parent.mkdir()
        checked.write_text(scratch.path(unit))
        proc = subprocess.run([analyze, "verify", str(checked)], capture_output=True, text=True, timeout=60,
                              check=False, cwd=checked.parent)
        assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr

    # what systemd does before ExecStart=: the state directory for the service's user, the key as a credential
    user = NOBODY if os.geteuid() == 0 and shutil.which("setpriv") and nobody_can_run_python() else os.geteuid()
    state = scratch.root / "var" / "lib" / "driverlog"
    state.mkdir(mode=0o750)
    credentials = open_tmp / "credentials"
    credentials.mkdir()
    shutil.copy(etc / "gerrit-key", credentials / "gerrit-key")
    if os.geteuid() == 0:
        for path in (state, credentials, credentials / "gerrit-key"):
            os.chown(path, user, user)
    gerrit.server.authorized_keys.append(paramiko.PKey.from_path(etc / "gerrit-key"))  # "add gerrit-key.pub"
    unit_env = dict(re.findall(r"^Environment=(\w+)=(.*)$", unit, re.M))
    env.update({k: scratch.path(v) for k, v in unit_env.items()}, CREDENTIALS_DIRECTORY=str(credentials))
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert exec_start is not None
    argv = scratch.path(exec_start.group(1)).split()
    if user != os.geteuid():
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(argv, cwd=state, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            try:
                status, _, body = http_get(scratch.http_port, "/healthz")
            except OSError:
                return False
            return status == 200 and json.loads(body).get("gerrit") == "connected"
        assert wait_until(lambda: healthy() or daemon.poll() is not None, timeout=60) and daemon.poll() is None, \
            log.read_text()[-6000:]
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
    assert daemon.returncode == 0, log.read_text()[-3000:]
    assert (state / "driverlog.sqlite").is_file()
    assert '"demo_registry_in_use"' not in log.read_text() or not UPSTREAM.exists()
