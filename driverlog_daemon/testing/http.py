"""A WSGI app served over real HTTP on 127.0.0.1 from a thread of the test's own process (the standard library's
``wsgiref`` with a thread per connection), for tests of the app's routes and answers. The web tier itself is
gunicorn (``driverlog-daemon serve``), which has tests of its own."""

from __future__ import annotations

import ssl
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class ThreadedServer:
    def __init__(self, app: Any, listen: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._server = make_server(listen, port, app, server_class=_Threading, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="test-http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def listen(self) -> str:
        return str(self._server.server_address[0])

    def wrap(self, context: ssl.SSLContext) -> None:
        """Serve TLS with ``context`` (before :meth:`start`)."""
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
