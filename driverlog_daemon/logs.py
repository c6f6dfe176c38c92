"""Logging with structlog: JSON lines for journald (stderr not a TTY), a colourful console on a TTY.

An explicit processor chain, configured once per process by :func:`configure`. Every line carries an event
name plus its context (ci_account, change, patch_set, driver, …); comments are never logged whole at INFO.

A short command need not pay for importing structlog: :func:`configure_on_first_use` keeps the
settings, and the loggers of :func:`get_logger` import and configure structlog when they first log.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}  # logging.DEBUG … logging.ERROR
_deferred: tuple[str, str, TextIO | None] | None = None


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    global _deferred
    _deferred = None
    import logging

    import structlog

    out = stream or sys.stderr
    # paramiko logs every failed connection with a traceback of its own; we log those events ourselves.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty()) if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def configure_on_first_use(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """:func:`configure`, done when a logger of :func:`get_logger` first logs (never, if nothing is logged)."""
    global _deferred
    _deferred = (level, fmt, stream)


class _Logger:
    """structlog's logger named ``name``, imported when first used."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        if _deferred is not None:
            configure(*_deferred)
        import structlog

        return getattr(structlog.get_logger(self._name), method)


def get_logger(name: str) -> Any:
    """A logger for a module of the hot path: ``log.info("event", key=value)`` as structlog's."""
    return _Logger(name)
