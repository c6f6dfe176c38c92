"""Expose: the read-only web side, served by waitress on 127.0.0.1 by default.

``app.py`` is the WSGI application (routes, cache, headers), ``queries.py`` the read-only SQL, ``api.py``
DriverLog's API shapes, ``badge.py`` the badges, ``templates/`` the HTML, SVG and CSS.
"""

from __future__ import annotations

import threading
from typing import Any

from waitress.server import create_server

from driverlog_daemon.web.app import App, Health, Live

__all__ = ["App", "Health", "Live", "WebServer"]


class WebServer:
    """waitress in a thread: a bounded pool of ``threads`` workers, stoppable (waitress itself is not)."""

    def __init__(self, app: Any, listen: str = "127.0.0.1", port: int = 8080, threads: int = 4) -> None:
        self.app = app
        self._server = create_server(app, host=listen, port=port, threads=threads, ident="driverlog-daemon",
                                     clear_untrusted_proxy_headers=True, channel_timeout=30,
                                     asyncore_loop_timeout=0.25)  # stop() takes effect within this
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
        """Close the listening socket and every connection, then the worker threads."""
        self._stopped = True
        server: Any = self._server
        while server._map:
            for channel in list(server._map.values()):
                channel.handle_close()
        server.task_dispatcher.shutdown()
        self._thread.join(5)
