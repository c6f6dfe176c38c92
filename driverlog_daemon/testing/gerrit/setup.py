"""Set-up helpers: a Gerrit test server with fresh keys in a folder, and a daemon configuration pointing at it."""

from __future__ import annotations

from pathlib import Path

import paramiko

from driverlog_daemon.source.ssh import host_label
from driverlog_daemon.testing.gerrit.server import GerritTestServer


def start_in(work: Path) -> GerritTestServer:
    """A test server on 127.0.0.1 with fresh keys: the client's private key in ``work/id_ecdsa`` and the server's
    host key in ``work/known_hosts`` (what a daemon's configuration points at)."""
    client_key = paramiko.ECDSAKey.generate(bits=256)
    client_key.write_private_key_file(str(work / "id_ecdsa"))
    host_key = paramiko.ECDSAKey.generate(bits=256)
    server = GerritTestServer(host_key, [client_key]).start()
    (work / "known_hosts").write_text(
        f"{host_label(server.host, server.port)} {host_key.get_name()} {host_key.get_base64()}\n")
    return server


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
