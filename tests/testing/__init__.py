"""The test tools themselves (driverlog_daemon.testing): the Gerrit test server."""
