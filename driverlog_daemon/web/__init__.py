"""Expose: the read-only web side, served by waitress on 127.0.0.1 by default.

``app.py`` is the WSGI application (routes, cache, headers), ``api.py`` DriverLog's API shapes, ``badge.py`` the
badges, ``templates/`` the HTML, SVG and CSS. Its reads are ``driverlog_daemon.reads``, on read-only connections.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from waitress.server import create_server

from driverlog_daemon.web.app import App, Health, Live

__all__ = ["App", "Health", "Live", "WebServer"]


class WebServer:
    """waitress in a thread: a bounded pool of ``threads`` workers, stoppable (waitress itself is not)."""

    def __init__(self, app: Any, listen: str = "127.0.0.1", port: int = 8080, threads: int = 4) -> None:
        self.app = app
        # waitress warns "Task queue depth is N" for every request that waits for a thread: a line per request
        # under load, in the journal and on the CPU. The depth shows in latency; keep its errors only.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self._server = create_server(app, host=listen, port=port, threads=threads, ident="driverlog-daemon",
                                     clear_untrusted_proxy_headers=True, channel_timeout=30)
        self._thread = threading.Thread(target=self._run, name="driverlog-http", daemon=True)
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def listen(self) -> str:
        return str(self._server.effective_host)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._server.run()
        except OSError:
            if not self._stopped:
                raise

    def stop(self) -> None:
        """Close the listening socket and every connection from the loop's own thread (woken through waitress's
        trigger, so it need not wait for its select timeout), then stop the worker threads."""
        self._stopped = True
        server: Any = self._server

        def close_all() -> None:
            for channel in list(server._map.values()):
                try:
                    channel.handle_close()
                except OSError:  # a connection the client closed meanwhile
                    server._map.pop(channel._fileno, None)

        if self._thread.is_alive():
            try:
                server.trigger.pull_trigger(close_all)
            except OSError:
                pass
            self._thread.join(5)
        if server._map:  # never started, or the loop is gone: close from here
            close_all()
        server.task_dispatcher.shutdown()
