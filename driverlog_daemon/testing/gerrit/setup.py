"""Set-up helpers: a Gerrit test server with fresh keys in a folder, the daemon's view of it (a ``[gerrit]`` section
or a whole configuration file), and changes to find there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import paramiko

from driverlog_daemon.config import GerritConfig
from driverlog_daemon.source.ssh import host_label
from driverlog_daemon.testing.events import comment_event, other_event
from driverlog_daemon.testing.gerrit.server import GerritTestServer


def new_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate(bits=256)


@dataclass
class SSHEnv:
    """A running test server and the files a client needs: its private key and a known_hosts file."""

    server: GerritTestServer
    client_key_file: Path
    known_hosts: Path
    host_key: paramiko.PKey

    def config(self, **overrides: object) -> GerritConfig:
        """A ``[gerrit]`` section for this server (short timeouts for tests), with ``overrides``."""
        cfg = GerritConfig(host=self.server.host, port=self.server.port, username="driverlog",
                           key_file=str(self.client_key_file), known_hosts=str(self.known_hosts),
                           keepalive_seconds=5, connect_timeout_seconds=5, stall_timeout_seconds=30)
        return cfg._replace(**overrides)  # type: ignore[arg-type]


def start_in(work: Path, *, trust: bool = True) -> SSHEnv:
    """A test server on 127.0.0.1 with fresh keys: the client's private key in ``work/id_ecdsa`` and the server's
    host key in ``work/known_hosts`` (left empty unless ``trust``: a host the client does not know)."""
    client_key = new_key()
    key_file = work / "id_ecdsa"
    client_key.write_private_key_file(str(key_file))
    host_key = new_key()
    server = GerritTestServer(host_key, [client_key]).start()
    known = work / "known_hosts"
    known.write_text(
        f"{host_label(server.host, server.port)} {host_key.get_name()} {host_key.get_base64()}\n" if trust else "")
    return SSHEnv(server, key_file, known, host_key)


def daemon_config(work: Path, server: GerritTestServer, *, username: str, registry: Path, database: Path,
                  http_port: int, **gerrit: float) -> Path:
    """Write ``work/driverlog.toml``: a daemon's configuration for ``server`` with the keys :func:`start_in` wrote
    (``gerrit``: more keys of its section), JSON logs, the status page on 127.0.0.1:``http_port``."""
    path = work / "driverlog.toml"
    more = "".join(f"{key} = {value}\n" for key, value in gerrit.items())
    path.write_text(
        f'[gerrit]\nhost = "{server.host}"\nport = {server.port}\nusername = "{username}"\n'
        f'key_file = "{work / "id_ecdsa"}"\nknown_hosts = "{work / "known_hosts"}"\n{more}\n'
        f'[registry]\npath = "{registry}"\n\n[database]\npath = "{database}"\n\n'
        f'[http]\nlisten = "127.0.0.1"\nport = {http_port}\n\n[log]\nformat = "json"\nlevel = "info"\n')
    return path


def seed_changes(server: GerritTestServer, now: int) -> None:
    """Seven CI comments on openstack/cinder (changes 5000-5006), a person's on nova, a patchset-created."""
    for i in range(7):
        account = "acme-storage-ci" if i % 2 == 0 else "initech-ci"
        server.record_only(comment_event(author=account, number=5000 + i, created_on=now - 100 + i,
                                         project="openstack/cinder"))
    server.record_only(comment_event(author="jdev", number=6000, created_on=now, project="openstack/nova"))
    server.record_only(other_event("patchset-created", now))
