"""The checks ``run`` makes of its configuration's files before it starts (and ``check-config`` and ``serve``):
files readable, ports in range, ``listen`` an address here, the database's directory writable. Apart from
:mod:`config`, which reads and types the configuration, because these look at the machine."""

from __future__ import annotations

import os
from pathlib import Path

from driverlog_daemon.config import Config, ConfigError, webhook_secret


def check_files(config: Config, *, writes: bool = True, before_start: bool = False) -> list[str]:
    """The checks ``run`` makes before it starts: files it will need exist and are readable, and (``writes``) the
    database's directory is writable; ``serve`` only reads, a copy on read-only media too. ``before_start``
    (``check-config``): a database directory not made yet is a note, not an error, since systemd's
    ``StateDirectory=`` makes it as the service starts. Returns the notes."""
    notes: list[str] = []
    g = config.gerrit
    if g.host:
        if not g.username:
            raise ConfigError("gerrit.username", "required when gerrit.host is set")
        if not g.key_file:
            raise ConfigError("gerrit.key_file", "required when gerrit.host is set "
                              "(or provide the credential gerrit-key through systemd's LoadCredential=)")
        _readable("gerrit.key_file", g.key_file)
        known = Path(g.known_hosts).expanduser()
        if g.host_key_policy == "strict" or known.exists():
            _readable("gerrit.known_hosts", str(known))
    if not config.registry.url:
        _readable("registry.path", config.registry.path)
    for hook in config.webhooks:
        webhook_secret(hook)
    db_dir = Path(config.database.path).expanduser().resolve().parent
    if not db_dir.is_dir() and before_start and db_dir.parent.is_dir():
        notes.append(f"database.path: directory {db_dir} does not exist yet: systemd's StateDirectory= makes it as "
                     "the service starts; without systemd, make it, writable by the daemon's user")
    elif not db_dir.is_dir():
        raise ConfigError("database.path", f"directory {db_dir} does not exist")
    elif writes and not os.access(db_dir, os.W_OK):
        raise ConfigError("database.path", f"directory {db_dir} is not writable (SQLite writes its WAL beside "
                          "the file)")
    for key, port in (("gerrit.port", g.port), ("http.port", config.http.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(key, f"must be a TCP port, 0 to 65535, got {port}")
    if config.http.enabled:
        import socket

        try:
            socket.getaddrinfo(config.http.listen, config.http.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConfigError("http.listen", f"{config.http.listen!r} is not an address here: {exc}") from None
        if before_start and config.http.port:
            notes.extend(_port_in_use(config.http.listen, config.http.port))
    return notes


def _port_in_use(listen: str, port: int) -> list[str]:
    """A note when ``listen``:``port`` cannot be bound now: ``run`` would fail to start, unless what holds it is
    the daemon this configuration already runs (so a note, not an error)."""
    import socket

    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web tier binds it
        try:
            probe.bind((listen, port))
        except OSError as exc:
            return [f"http.port: {listen}:{port} cannot be bound now ({exc.strerror or exc}): in use by this "
                    "daemon already running, or run will not start"]
    return []


def _readable(key: str, path: str) -> None:
    p = Path(path).expanduser()
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(key, f"{p}: {exc.strerror or exc}") from None
