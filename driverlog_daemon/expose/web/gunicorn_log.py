"""gunicorn's own messages (the arbiter's and the workers': booting, signals, a worker replaced) through structlog,
so that the journal holds one log format: a JSON object a line, like every other line of the daemon's."""

from __future__ import annotations

from typing import Any

from gunicorn import glogging

from driverlog_daemon.logs import get_logger

log = get_logger("driverlog.web.gunicorn")


def _text(msg: Any, args: tuple[Any, ...]) -> str:
    try:
        return str(msg) % args if args else str(msg)
    except (TypeError, ValueError):
        return " ".join(map(str, (msg, *args)))


class Logger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, its messages written by structlog as ``gunicorn`` events (``message``: gunicorn's text)."""

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        log.critical("gunicorn", message=_text(msg, args))

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        log.error("gunicorn", message=_text(msg, args))

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        log.warning("gunicorn", message=_text(msg, args))

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        log.info("gunicorn", message=_text(msg, args))

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        log.debug("gunicorn", message=_text(msg, args))

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        log.error("gunicorn", message=_text(msg, args), exc_info=True)

    def log(self, lvl: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
        log.info("gunicorn", message=_text(msg, args), level_number=lvl)
