"""A webhook receiver on 127.0.0.1 for tests and the soak: it checks each delivery's signature, keeps what it got,
and misbehaves on demand — down (nothing listening), answering 500, or holding a request past the sender's timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    delivery_id: str
    signature_ok: bool
    body: dict[str, Any]
    raw: bytes
    answered: int  # the status it was answered with (0: held, then dropped)
    at: float
    signature: str  # the X-DriverLog-Signature header as sent


class Receiver:
    """``mode``: ``ok`` (204), ``error`` (500), ``hang`` (hold each request ``hang_seconds``, then 200), ``hold``
    (hold each request until :meth:`release`, then close it unanswered: not accepted), or ``flaky`` (500 or a hang
    now and then, at random, else 204), ``echo`` (404 with the request path in its reason and body, as Express answers
an unknown route). ``down()``/``up()`` close and reopen the port."""

    def __init__(self, secret: bytes, *, mode: str = "ok", hang_seconds: float = 3.0, seed: int = 0,
                 error_share: float = 0.2, hang_share: float = 0.05) -> None:
        self.secret = secret
        self.mode, self.hang_seconds = mode, hang_seconds
        self.error_share, self.hang_share = error_share, hang_share
        self.rng = random.Random(seed)
        self.received: list[Received] = []
        self.holding = 0  # requests held right now
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/driverlog?token=x"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._answer(self, raw)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), name="test-receiver", daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        wanted = "sha256=" + hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
        signature = handler.headers.get("X-DriverLog-Signature", "")
        signature_ok = hmac.compare_digest(wanted, signature)
        with self._lock:
            mode = self.mode
            if mode == "flaky":
                draw = self.rng.random()
                mode = "error" if draw < self.error_share else "hang" if draw < self.error_share + self.hang_share \
                    else "ok"
        if mode == "hold":
            with self._lock:
                self.holding += 1
            self._released.wait(30)
            with self._lock:
                self.holding -= 1
                self.received.append(Received(handler.headers.get("X-DriverLog-Delivery", ""), signature_ok,
                                              json.loads(raw), raw, 0, time.time(), signature))
            handler.close_connection = True
            return
        if mode == "echo":  # as Express's default 404 does: the request path, in the reason and in the body
            body = f"Cannot POST {handler.path}".encode()
            with self._lock:
                self.received.append(Received(handler.headers.get("X-DriverLog-Delivery", ""), signature_ok,
                                              json.loads(raw), raw, 404, time.time(), signature))
            handler.send_response(404, f"Not Found: {handler.path}")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        status = {"ok": 204, "error": 500, "hang": 200}[mode]
        if mode == "hang":
            with self._lock:
                self.holding += 1
            time.sleep(self.hang_seconds)
            with self._lock:
                self.holding -= 1
        with self._lock:
            self.received.append(Received(handler.headers.get("X-DriverLog-Delivery", ""), signature_ok,
                                          json.loads(raw), raw, status, time.time(), signature))
        try:
            handler.send_response(status)
            handler.send_header("Content-Length", "0" if status != 500 else "13")
            handler.end_headers()
            if status == 500:
                handler.wfile.write(b"internal oops")
        except OSError:
            pass  # the sender gave up waiting

    def hold(self) -> None:
        """Hold the requests that come from now on, until :meth:`release`."""
        self._released.clear()
        self.mode = "hold"

    def release(self, mode: str = "flaky") -> None:
        self.mode = mode
        self._released.set()

    def deliveries(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.down()


def check(received: list[Received], transitions: dict[str, dict[str, Any]]) -> list[str]:
    """What is wrong with what a receiver accepted, given the final ``mark_transitions`` (id -> row, for one hook):
    a transition never received, a retracted one still standing, a bad signature, one delivery id with two bodies,
    a driver × release whose transitions came out of queue order."""
    problems: list[str] = []
    bodies: dict[str, bytes] = {}
    last_kind: dict[str, str] = {}
    for r in received:
        if not r.signature_ok:
            problems.append(f"bad signature on {r.delivery_id}")
        if bodies.setdefault(r.delivery_id, r.raw) != r.raw:
            problems.append(f"delivery {r.delivery_id} came with two bodies")
    first: dict[str, Received] = {}
    for r in received:  # by first acceptance of each delivery (a 500 is not one: the sender must try again)
        if 200 <= r.answered < 300:
            first.setdefault(r.delivery_id, r)
    for r in first.values():
        last_kind[r.body["transition"]["id"]] = r.body["type"]
    for tid in transitions:
        if last_kind.get(tid) != "transition":
            problems.append(f"transition {tid} not delivered (last: {last_kind.get(tid)})")
    for tid, kind in last_kind.items():
        if kind == "transition" and tid not in transitions:
            problems.append(f"transition {tid} delivered but no longer in the history, and never retracted")
    queue_order: dict[tuple[int, str], list[int]] = {}
    for r in first.values():
        key = (r.body["driver"]["id"], r.body["transition"]["release"])
        queue_order.setdefault(key, []).append(int(r.delivery_id.split("-")[0]))
    for key, ids in queue_order.items():
        if ids != sorted(ids):
            problems.append(f"{key}: delivered out of queue order {ids}")
    return problems
