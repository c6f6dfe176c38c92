"""The daemon: wires the stages and owns the lifecycle (threads, signals, systemd)."""
