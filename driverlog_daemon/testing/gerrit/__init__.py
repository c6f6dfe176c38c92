"""The Gerrit SSH test server, a package: ``query`` (the query language), ``index`` (the changes it knows),
``server`` (the SSH server and its fault controls), ``setup`` (fresh keys, a daemon's configuration)."""

from driverlog_daemon.testing.gerrit.index import ChangeIndex
from driverlog_daemon.testing.gerrit.query import QueryError, StoredChange, parse_query
from driverlog_daemon.testing.gerrit.server import GERRIT_VERSION, GerritTestServer
from driverlog_daemon.testing.gerrit.setup import daemon_config, start_in

__all__ = ["GERRIT_VERSION", "ChangeIndex", "GerritTestServer", "QueryError", "StoredChange", "daemon_config",
           "parse_query", "start_in"]
