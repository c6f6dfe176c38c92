"""The Gerrit SSH test server, a package: ``query`` (the query language), ``index`` (the changes it knows),
``server`` (the SSH server and its fault controls), ``transport`` (its SSH side), ``setup`` (fresh keys, a daemon's
configuration, changes to find)."""

from driverlog_daemon.testing.gerrit.index import ChangeIndex
from driverlog_daemon.testing.gerrit.query import QueryError, StoredChange, parse_query
from driverlog_daemon.testing.gerrit.server import GERRIT_VERSION, GerritTestServer
from driverlog_daemon.testing.gerrit.setup import SSHEnv, daemon_config, new_key, seed_changes, start_in

__all__ = ["GERRIT_VERSION", "ChangeIndex", "GerritTestServer", "QueryError", "SSHEnv", "StoredChange",
           "daemon_config", "new_key", "parse_query", "seed_changes", "start_in"]
