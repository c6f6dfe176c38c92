"""``driverlog-daemon serve``: the web side in its own processes, a pre-fork gunicorn.

Workers (``[http] workers``, default the CPUs) each run the read-only :class:`~driverlog_daemon.expose.web.app.App` on
threads (``[http] threads``). Under ``run`` the daemon binds the listening socket and hands it over (``fd``), so a
restarted web tier keeps the port; the daemon's live state (health, the stream, the open gap) and every metric of
both sides come through the runtime directory (:mod:`driverlog_daemon.expose.runtime`). Alone, ``serve`` binds the
address itself and serves what the database holds.

A client gets ``[http] client_timeout_seconds`` to send its request and take its answer, in all (a streamed export:
``export_timeout_seconds``, and the read snapshot it holds ends with it): one that trickles its request or never
reads its answer loses its connection then, with one log line (``client_cut``), instead of holding a thread. A
public site still belongs behind a buffering proxy (``deploy/nginx/driverlog.conf``).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers import gthread
from gunicorn.workers.gthread import TConn, ThreadWorker

from driverlog_daemon.config import Config
from driverlog_daemon.expose import runtime
from driverlog_daemon.logs import get_logger
from driverlog_daemon.registry.load import Registry, RegistryError, load_registry
from driverlog_daemon.store import reads, reads_health, reads_history, reads_jobs

log = get_logger("driverlog.web")


#: A request head larger than this goes to the parser as it is (which refuses what is past its own limits).
HEAD_PEEK_BYTES = 16384


class _DeadlineSocket(socket.socket):
    """A client connection whose blocking reads and writes share one deadline per request, set when a worker
    thread takes the request (gunicorn makes the socket blocking then): a trickle of bytes cannot stretch it.
    Once the answer is sent and the connection is being closed, draining what the client still sends waits a
    moment at most: gunicorn does that on the worker's main loop, which a client that never closes would stall."""

    timeout_seconds = 10.0
    linger_seconds = 0.1
    _deadline = 0.0
    _started = 0.0
    _closing = False
    _cut = False
    head: bytearray | None = None  # what came of the request head before a thread took the connection

    def setblocking(self, flag: bool) -> None:
        if flag:
            self._started = time.monotonic()
            self._deadline = self._started + self.timeout_seconds
            self.settimeout(self.timeout_seconds)
        else:
            super().setblocking(False)

    def shutdown(self, how: int) -> None:
        self._closing = True
        super().shutdown(how)

    def _remaining(self) -> None:
        current = self.gettimeout()
        if current is None or current == 0:  # non-blocking (the poller's), or no deadline: as it is
            return
        left = self._deadline - time.monotonic()
        if self._cut:  # a client cut is not waited for again (its close would linger on the worker's main loop)
            left = 0
        if self._closing:
            left = min(left, self.linger_seconds)
        if left <= 0:
            raise TimeoutError("client too slow")
        if left != current:  # (it grows too: an export's deadline is set after the request was read)
            self.settimeout(left)

    def extend_deadline(self, seconds: float) -> None:
        """A streamed answer (an export) has ``seconds`` from the request's start, in all."""
        self._deadline = max(self._deadline, self._started + seconds)

    def take_head(self) -> bool:
        """Take what the client has sent so far into ``head`` (never waiting); whether the request head is
        complete (or more than a head's worth came, or the client closed: the parser decides then)."""
        if self.head is None:
            self.head = bytearray()
        while len(self.head) < HEAD_PEEK_BYTES and b"\r\n\r\n" not in self.head:
            try:
                data = socket.socket.recv(self, HEAD_PEEK_BYTES - len(self.head), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True  # the parser meets the error and ends the connection its usual way
            if not data:
                return True
            self.head += data
        return True

    def expired(self) -> bool:
        return time.monotonic() - self._started >= self.timeout_seconds

    def cut(self, what: str) -> None:
        self._timed_out(what)

    def _timed_out(self, what: str) -> ConnectionResetError:
        """The deadline cut this client: one log line, and an error gunicorn drops quietly (its own log of a
        timeout is a traceback per client)."""
        if not self._cut and not self._closing:
            self._cut = True
            try:
                peer = self.getpeername()[0]
            except OSError:
                peer = None
            log.warning("client_cut", reason=f"too slow to {what}", peer=peer,
                        seconds=round(time.monotonic() - self._started, 1))
        return ConnectionResetError(errno.ECONNRESET, "client too slow")

    def recv(self, *args: Any) -> bytes:
        try:
            self._remaining()
            return super().recv(*args)
        except TimeoutError:
            raise self._timed_out("send its request") from None

    def recv_into(self, *args: Any) -> int:
        try:
            self._remaining()
            return super().recv_into(*args)
        except TimeoutError:
            raise self._timed_out("send its request") from None

    def send(self, *args: Any) -> int:
        try:
            self._remaining()
            return super().send(*args)
        except TimeoutError:
            raise self._timed_out("take its answer") from None

    def sendall(self, *args: Any) -> None:
        try:
            self._remaining()
            super().sendall(*args)
        except TimeoutError:
            raise self._timed_out("take its answer") from None


class Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, with each client connection on a :class:`_DeadlineSocket`; and it ends with
    its parent (the arbiter), which itself ends with the daemon that started it."""

    def handle(self, conn: TConn) -> Any:
        """A new connection goes to a thread's parser only once its request head has arrived: until then what
        it sent is taken off the socket into the socket's own buffer (so the poller waits for more, rather than
        finding it readable again at once) and the connection waits on the poller, holding no thread, until its
        deadline cuts it. (200 clients trickling their heads held every thread, one after another.)"""
        sock = conn.sock
        if not conn.initialized and isinstance(sock, _DeadlineSocket):
            if not sock.take_head():
                if sock.expired():
                    sock.cut("send its request")
                    return False  # closed by the worker's loop
                return gthread._DEFER  # back to the poller until more bytes come
            conn.init()
            if sock.head:  # the parser reads it first, then the socket
                conn.parser.unreader.unread(bytes(sock.head))
                sock.head.clear()
        return super().handle(conn)

    def accept(self, listener: Any) -> None:
        try:
            client, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn_sock = _DeadlineSocket(client.family, client.type, client.proto, fileno=client.detach())
        conn_sock.setblocking(True)
        self.enqueue_req(TConn(self.cfg, conn_sock, address, listener.getsockname()))


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], make_app: Callable[[], Any]) -> None:
        self.options, self.make_app = options, make_app
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return self.make_app()


def _die_with_parent(expected_parent: int | None = None) -> None:
    """Linux's parent-death signal: this process gets SIGTERM when the process that started it ends, even by
    ``kill -9`` (the arbiter's own workers end when it does). ``expected_parent``: the parent may have ended
    before the signal was asked for; then end now."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop is all there is
        pass
    if expected_parent is not None and os.getppid() != expected_parent:
        raise SystemExit("driverlog-daemon serve: the daemon that started it is gone")


class _Registry:
    """The registry the web tier shows: read again when its file changes (the daemon's copy after a reload); a
    file that fails the checks leaves the one in use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._registry: Registry | None = None
        self._lock = threading.Lock()

    def current(self) -> Registry:
        try:
            st = self.path.stat()
            seen: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            seen = self._seen
        if seen != self._seen or self._registry is None:
            with self._lock:
                if seen != self._seen or self._registry is None:
                    try:
                        self._registry = load_registry(self.path, remember=True)
                    except RegistryError as exc:
                        if self._registry is None:
                            raise
                        log.error("registry_reload_failed", path=str(self.path), errors=exc.errors[:20])
                    self._seen = seen
        return self._registry


def _snapshot(reader: Any, read: Callable[[Any, float], Any]) -> Any:
    with reader.snapshot() as conn:
        return read(conn, time.time())


def build_app(config: Config) -> Any:
    """The WSGI app of one worker: the registry, the database read-only, and the daemon's state when there is
    one."""
    from driverlog_daemon.expose.runtime import Live
    from driverlog_daemon.expose.web.app import App
    from driverlog_daemon.metrics import WebMetrics

    database = os.path.expanduser(config.database.path)
    root = runtime.current()
    registry = _Registry(Path(config.registry.path))  # under `run`: the daemon's copy of the one in force
    state: Callable[[], runtime.DaemonState | None] = (lambda: runtime.read_state(root)) if root else (lambda: None)

    def daemon_pid() -> int | None:
        s = state()
        return s.pid if s is not None else None

    metrics = WebMetrics(multiprocess=True, daemon_pid=daemon_pid)
    reader = reads.Reader(database)

    def read_gaps() -> tuple[list[reads.Gap], int | None, int | None]:
        s = state()
        server = s.server if s is not None else ""
        if not server:
            return [], None, None
        with reader.snapshot() as conn:
            return (reads.open_gaps(conn, server), reads.cursor(conn, server),
                    reads.newest_event_time(conn, server))

    def read_releases() -> list[tuple[str, str, str, str, int, int | None]]:
        with reader.snapshot() as conn:
            return reads.release_times(conn)

    metrics.watch_releases(read_releases)

    def read_drivers() -> list[tuple[str, str, str, str, int]]:
        with reader.snapshot() as conn:
            return reads.driver_last_times(conn)

    metrics.watch_drivers(read_drivers)

    def read_health() -> list[tuple[str, str, str, float | None, float | None, bool | None]]:
        with reader.snapshot() as conn:
            healths = reads_health.registered_ci_health(conn, time.time(), config.health.silence_days)
        return [(p, v, n, h["pass_rate"]["30"], h["coverage"]["ratio"], h["at_risk"]) for (p, v, n, _), h in healths]

    metrics.watch_health(read_health)
    metrics.watch_jobs(lambda: _snapshot(reader, reads_jobs.flake_gauges))

    def read_outbox() -> dict[str, dict[str, Any]]:
        with reader.snapshot() as conn:
            return reads.webhook_outbox(conn, time.time())

    metrics.watch_outbox(read_outbox)

    def read_history() -> tuple[int, int]:
        with reader.snapshot() as conn:
            progress = reads_history.progress(conn)
        return progress.done, progress.total

    metrics.watch_history(read_history)
    if root is not None:
        metrics.watch_gaps(read_gaps)
    else:  # alone, no daemon writes the registry's gauges
        metrics.registry_size(len(registry.current().drivers), len(registry.current().by_account))

    def process_health() -> tuple[bool, dict[str, Any]]:
        if root is None:  # serve alone: healthy while the database can be read
            try:
                with reader.snapshot() as conn:
                    verifications = reads.verification_count(conn)
            except sqlite3.Error as exc:
                return False, {"writer": "none (serve only)", "database": f"cannot be read: {exc}"}
            return True, {"writer": "none (serve only: the database is read as it is)",
                          "verifications": verifications}
        s = state()
        if s is None:
            return False, {"writer": "the ingest daemon has not reported yet"}
        age = time.time() - s.written_at
        detail = dict(s.health)
        if age > runtime.STATE_FRESH_SECONDS:
            return False, {**detail, "writer": f"the ingest daemon has not reported for {age:.0f} s"}
        return s.healthy, detail

    def live() -> Live:
        s = state()
        try:  # from the file: `serve` alone shows an import under way too
            with reader.snapshot() as conn:
                importing = reads_history.progress(conn).text()
        except sqlite3.Error:
            importing = None
        if s is None and root is None:  # `serve` alone: what the file says of the stream that wrote it
            return runtime.live_from_file(reader, importing)
        if s is None:
            return Live(gerrit="unknown", importing=importing)
        return Live(s.live.gerrit, s.live.newest_event_time, s.live.open_gap, importing)

    h = config.http
    return App(database, registry.current, metrics, process_health, live=live,
               stale_after_days=config.status.stale_after_days,
               silence_days=config.health.silence_days,
               max_age=h.max_age_seconds, stale_while_revalidate=h.stale_while_revalidate_seconds,
               max_staleness=h.max_staleness_seconds, export_seconds=h.export_timeout_seconds,
               max_exports=max(1, h.max_exports))


def options(config: Config, *, fd: int | None = None) -> dict[str, Any]:
    h = config.http
    workers = h.workers or len(os.sched_getaffinity(0))
    return {
        "bind": [f"fd://{fd}"] if fd is not None else [f"[{h.listen}]:{h.port}" if ":" in h.listen
                                                        else f"{h.listen}:{h.port}"],
        "workers": workers,
        "worker_class": "driverlog_daemon.expose.web.server.Worker",
        "threads": h.threads,
        # A worker stops accepting past this many connections. One still sending its request head waits on the
        # poller, holding no thread (``Worker.handle``), so a few hundred of those must not stop it accepting.
        "worker_connections": max(1000, h.threads * 4),
        # gunicorn's timeout is the workers' heartbeat (a stuck worker is replaced): well above a client's time,
        # so that a slow client is cut before its worker looks stuck.
        "timeout": int(max(3 * h.client_timeout_seconds, 30)),
        "graceful_timeout": 5,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "logger_class": "driverlog_daemon.expose.web.gunicorn_log.Logger",  # one log format: structlog's
        "loglevel": config.log.level if config.log.level != "debug" else "info",
        "proc_name": "driverlog-web",
        "control_socket_disable": True,  # no control socket: nothing to write
        "forwarded_allow_ips": "127.0.0.1,::1",
        "post_fork": lambda server, worker: _die_with_parent(),
        "when_ready": lambda server: log.info("http_listening", listen=h.listen,
                                              port=server.LISTENERS[0].sock.getsockname()[1],
                                              workers=workers, threads=h.threads),
    }


def serve(config: Config, *, fd: int | None = None) -> int:
    """Run the web tier until SIGTERM/SIGINT (gunicorn's arbiter in this process). ``fd``: a listening socket
    inherited from the daemon."""
    parent = os.environ.pop("DRIVERLOG_PARENT_PID", None)
    if parent:  # started by the daemon (web.tier): end with it
        _die_with_parent(int(parent))
    _DeadlineSocket.timeout_seconds = config.http.client_timeout_seconds  # the workers inherit it
    _Gunicorn(options(config, fd=fd), lambda: build_app(config)).run()
    return 0
