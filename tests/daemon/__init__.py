"""The daemon as a process: configuration, lifecycle, systemd."""
