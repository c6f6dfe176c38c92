"""Test and demo tools, shipped like ``structlog.testing``: the Gerrit SSH test server and the sample generator.

Nothing in the daemon's pipeline imports this package.
"""
