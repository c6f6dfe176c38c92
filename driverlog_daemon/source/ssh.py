"""SSH to Gerrit with paramiko: host-key policy (strict | accept-new), timeouts, keepalive, exec helper.

Never paramiko's AutoAddPolicy or WarningPolicy: an unknown host is refused (``strict``) or, with
``accept-new``, recorded once and pinned from then on, like OpenSSH's ``StrictHostKeyChecking=accept-new``.
A key that differs from the recorded one is always refused.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from driverlog_daemon.config import GerritConfig


class HostKeyError(paramiko.SSHException):
    """The server's host key is unknown (strict) or differs from the recorded one."""


class CommandError(Exception):
    def __init__(self, command: str, status: int, stderr: str) -> None:
        self.command, self.status, self.stderr = command, status, stderr
        super().__init__(f"{command.split(' ', 2)[:2]} exited {status}: {stderr.strip()[:300]}")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a key."""
    digest: bytes = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_label(host: str, port: int) -> str:
    """How OpenSSH's known_hosts names a host: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


class _Policy(paramiko.MissingHostKeyPolicy):
    def __init__(self, mode: str, known_hosts: Path) -> None:
        self.mode = mode
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.mode != "accept-new":
            raise HostKeyError(
                f"host key for {hostname} is not known: {key.get_name()} {fingerprint(key)} is not in "
                f"{self.known_hosts} (host_key_policy = strict; add the key with ssh-keyscan after checking it)"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.known_hosts.open("a", encoding="utf-8") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def load_key(path: str) -> paramiko.PKey:
    """The private key in ``path`` (any type paramiko knows); a clear error when it cannot be used."""
    try:
        return paramiko.PKey.from_path(Path(path).expanduser())
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise paramiko.SSHException(f"cannot load private key {path}: {exc}") from None


def connect(cfg: GerritConfig) -> paramiko.SSHClient:
    """An authenticated SSH connection to Gerrit, or an exception; the client is closed on every failure."""
    known_hosts = Path(cfg.known_hosts).expanduser()
    client = paramiko.SSHClient()
    try:
        if known_hosts.exists():
            client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(_Policy(cfg.host_key_policy, known_hosts))
        timeout = cfg.connect_timeout_seconds or None
        pkey = load_key(cfg.key_file) if cfg.key_file else None
        try:
            client.connect(
                cfg.host, port=cfg.port, username=cfg.username, pkey=pkey,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                allow_agent=False, look_for_keys=False,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"host key for {host_label(cfg.host, cfg.port)} has CHANGED: server sent {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, {known_hosts} has {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)}; refusing to connect"
            ) from None
        transport = client.get_transport()
        if transport is not None and cfg.keepalive_seconds:
            transport.set_keepalive(max(1, int(cfg.keepalive_seconds)))
        return client
    except BaseException:
        client.close()
        raise


@dataclass
class CommandOutput:
    status: int
    stdout: bytes
    stderr: str


def run(client: paramiko.SSHClient, command: str, timeout: float) -> CommandOutput:
    """Run ``command`` on a new channel of the same transport; raise ``TimeoutError`` past ``timeout``."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise paramiko.SSHException("transport is not active")
    deadline = time.monotonic() + timeout
    channel = transport.open_session(timeout=timeout)
    try:
        channel.settimeout(max(0.05, deadline - time.monotonic()))
        channel.exec_command(command)
        out = bytearray()
        err = bytearray()
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command.split(' ', 2)[:2]} did not finish within {timeout:.1f} s")
            channel.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                data = channel.recv(65536)
            except TimeoutError:
                continue
            if data:
                out += data
                continue
            break  # end of output
        # The exit status follows the output; wait for it as long as the deadline allows.
        channel.status_event.wait(max(0.0, deadline - time.monotonic()))
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        return CommandOutput(status, bytes(out), err.decode("utf-8", "replace"))
    finally:
        channel.close()
