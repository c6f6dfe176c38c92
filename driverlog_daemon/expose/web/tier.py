"""The daemon's web tier: ``driverlog-daemon serve`` as a child process, supervised.

The daemon binds the listening socket itself and hands it to the child, so the port is known at once (``port =
0`` too), a restarted child serves on the same socket, and no request meets a closed port while it restarts. The
child is restarted when it dies (with backoff), stopped with the daemon, and — through Linux's parent-death signal,
which ``serve`` asks for — ends even when the daemon is killed with ``kill -9``, so a restarted ``run`` binds its
port at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

from driverlog_daemon.expose import runtime
from driverlog_daemon.logs import get_logger

log = get_logger("driverlog.web")

PARENT_ENV = "DRIVERLOG_PARENT_PID"


class WebTier:
    def __init__(self, listen: str, port: int, *, config_path: str | None, restart_delay: float = 0.5,
                 restart_max_delay: float = 30.0) -> None:
        family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((listen, port))
        except OSError as exc:  # named, so that startup_failed says which address
            self.sock.close()
            raise OSError(exc.errno, f"[http] {listen}:{port}: {exc.strerror or exc}") from None
        self.sock.listen(1024)
        self.sock.set_inheritable(True)
        self.listen, self.port = listen, int(self.sock.getsockname()[1])
        self.config_path = config_path
        self.restart_delay, self.restart_max_delay = restart_delay, restart_max_delay
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="driverlog-web-tier", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "driverlog_daemon", "serve", "--fd", str(self.sock.fileno())]
        if self.config_path:
            command += ["--config", self.config_path]
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        root = runtime.current()
        if root is not None and (root / runtime.REGISTRY).exists():
            # the registry in force, not whatever the file holds now (it may be an edit not reloaded, or broken)
            env["DRIVERLOG_REGISTRY_PATH"] = str(root / runtime.REGISTRY)
        with self._lock:
            self.proc = subprocess.Popen(command, pass_fds=(self.sock.fileno(),), env=env, stdin=subprocess.DEVNULL)
        log.info("web_tier_started", pid=self.proc.pid, port=self.port)

    def _supervise(self) -> None:
        delay = self.restart_delay
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("web_tier_exited", pid=proc.pid, exit_code=code, restart_in=delay)
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            self._spawn()
            # a child that served a while and then died is restarted quickly again; a crash loop backs off
            delay = self.restart_delay if time.monotonic() - started > 60 else min(delay * 2, self.restart_max_delay)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM: gunicorn finishes what its workers are answering); no restart after."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def stop(self, timeout: float = 5.0) -> bool:
        """:meth:`terminate`, then SIGKILL what is left after ``timeout``; close the socket. True when it ended
        in time."""
        self.terminate()
        with self._lock:
            proc = self.proc
        clean = True
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                clean = False
        self.sock.close()
        return clean
