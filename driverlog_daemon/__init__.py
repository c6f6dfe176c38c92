"""driverlog-daemon: records OpenStack third-party CI results for DriverLog drivers from Gerrit."""

__version__ = "0.1.0"
