from driverlog_daemon.cli import main

raise SystemExit(main())
