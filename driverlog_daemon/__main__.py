"""``python -m driverlog_daemon``: the command line."""

from driverlog_daemon.cli import main

raise SystemExit(main())
