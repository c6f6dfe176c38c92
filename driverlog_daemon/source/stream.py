"""Source: the live ``gerrit stream-events`` over SSH, that never gives up and notices when it should.

The reader reads raw bytes with ``recv()``, splits lines itself and hands every run of complete lines over at
once to ``deliver`` (a queue: the reader never waits on processing). A line longer than ``max_event_bytes``
is skipped to its newline and counted. It reconnects forever with exponential backoff and full jitter, and
watches for stalls: no bytes for ``stall_timeout_seconds`` -> probe the transport with ``gerrit version``;
no answer -> reconnect; an answer -> ask the backfill whether the quiet window really was quiet, and reconnect
when it finds CI comments the stream should have delivered (a silently dead stream).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
import structlog

from driverlog_daemon.config import GerritConfig
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.source import ssh

log = structlog.get_logger("driverlog.stream")


class Backoff:
    """Exponential backoff with full jitter: 1 s doubling to a 60 s cap; reset after 5 minutes connected."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, reset_after: float = 300.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.reset_after, self.rng = base, cap, reset_after, rng
        self.attempt = 0

    def next_delay(self) -> float:
        delay = float(self.rng()) * min(self.cap, self.base * 2.0 ** self.attempt)
        self.attempt += 1
        return delay

    def slow(self) -> float:
        """The slow end, for failures a quick retry will not fix (e.g. stream-events not permitted)."""
        self.attempt += 1
        return self.cap / 2 + self.rng() * self.cap / 2

    def connected_for(self, seconds: float) -> None:
        if seconds >= self.reset_after:
            self.attempt = 0


class StreamEnded(Exception):
    def __init__(self, status: int, stderr: str) -> None:
        self.status, self.stderr = status, stderr
        super().__init__(f"stream-events ended with status {status}: {stderr.strip()[:300]}")


class Reconnect(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class StreamHooks:
    """What the listener asks of the rest of the daemon."""

    deliver: Callable[[bytes], None]  # a block of complete lines; may block when the queue is full
    connected: Callable[[paramiko.SSHClient, bool], None]  # (client, first connection?): schedule a backfill
    # backfill the quiet window since wall time t: the CI results it found, or None when its backfill could not run
    # in time (queued behind one that is stuck): then the stream is doubted, and the connection replaced
    quiet_window: Callable[[paramiko.SSHClient, float], int | None]
    # the stream speaks again after a stall judged it alive: a gap before the block about to be delivered
    resumed: Callable[[paramiko.SSHClient], None] = lambda client: None


class StreamListener:
    def __init__(self, cfg: GerritConfig, hooks: StreamHooks, metrics: Metrics, stop: threading.Event, *,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic,
                 poll_interval: float = 0.5, probe_timeout: float | None = None) -> None:
        self.cfg = cfg
        self.hooks = hooks
        self.metrics = metrics
        self.stop = stop
        self.backoff = backoff or Backoff(cap=max(cfg.reconnect_max_delay_seconds, 0.1))
        self.clock = clock
        self.poll_interval = poll_interval
        self.probe_timeout = probe_timeout or max(1.0, min(10.0, cfg.stall_timeout_seconds / 2))
        self.server = f"{cfg.host}:{cfg.port}"
        self.state = "disconnected"
        self.connected_since: float | None = None
        self.delays: list[float] = []  # every backoff delay waited, newest last (for STATUS and tests)
        self.last_error: str = ""
        self._connections = 0

    # -------------------------------------------------------------------------------------------- loop

    def run(self) -> None:
        while not self.stop.is_set():
            slow = False
            reason = "error"
            started = self.clock()
            try:
                self._session()
                reason = "closed"
            except Reconnect as exc:
                reason = exc.reason
            except StreamEnded as exc:
                self.last_error = str(exc)
                log.error("stream_events_failed", server=self.server, status=exc.status, stderr=exc.stderr.strip())
                reason, slow = "exit-status", True
            except ssh.HostKeyError as exc:
                self.last_error = str(exc)
                log.error("host_key_rejected", server=self.server, error=str(exc))
                reason, slow = "host-key", True
            except paramiko.AuthenticationException as exc:
                self.last_error = f"authentication failed: {exc}"
                log.error("authentication_failed", server=self.server, username=self.cfg.username, error=str(exc))
                reason, slow = "auth", True
            except (OSError, EOFError, paramiko.SSHException, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("connection_lost", server=self.server, error=self.last_error)
            except Exception as exc:  # never let the reader thread die: whatever it was, reconnect
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("stream_error", server=self.server, error=self.last_error)
            finally:
                self._set_state("disconnected")
            if self.connected_since is not None:
                self.backoff.connected_for(self.clock() - self.connected_since)
                self.connected_since = None
            if self.stop.is_set():
                break
            self.metrics.reconnects.labels(reason).inc()
            delay = self.backoff.slow() if slow else self.backoff.next_delay()
            self.delays.append(delay)
            log.info("reconnect_scheduled", server=self.server, reason=reason, delay_seconds=round(delay, 3),
                     attempt=self.backoff.attempt, uptime_seconds=round(self.clock() - started, 3))
            self.stop.wait(delay)

    def _set_state(self, state: str) -> None:
        self.state = state
        self.metrics.connected.set(1 if state == "connected" else 0)

    def _session(self) -> None:
        self._set_state("connecting")
        self.metrics.connect_attempts.inc()
        client = ssh.connect(self.cfg)
        channel: paramiko.Channel | None = None
        try:
            transport = client.get_transport()
            assert transport is not None
            channel = transport.open_session(timeout=self.cfg.connect_timeout_seconds or None)
            command = "gerrit stream-events" + "".join(f" -s {t}" for t in self.cfg.subscribe)
            self.metrics.gerrit_commands.labels("stream").inc()
            channel.exec_command(command)
            self._set_state("connected")
            self.connected_since = self.clock()
            first = self._connections == 0
            self._connections += 1
            log.info("stream_connected", server=self.server, subscribe=list(self.cfg.subscribe), first=first)
            self.hooks.connected(client, first)
            self._read(client, channel)
        finally:
            if channel is not None:
                channel.close()
            client.close()

    # -------------------------------------------------------------------------------------------- read

    def _read(self, client: paramiko.SSHClient, channel: paramiko.Channel) -> None:
        channel.settimeout(self.poll_interval)
        partial = bytearray()
        skipping = False  # inside an oversized line: drop bytes up to its newline
        limit = self.cfg.max_event_bytes
        last_bytes = self.clock()
        last_bytes_wall = time.time()
        # After a stall that found the stream alive, what it may have dropped since that backfill's queries is not
        # proven: when it speaks again, a gap from before its next block is backfilled.
        quiet = False
        while not self.stop.is_set():
            try:
                data = channel.recv(1 << 16)
            except TimeoutError:
                # (not while stopping: a stall check then would open a gap no backfill is left to close)
                if self.clock() - last_bytes >= self.cfg.stall_timeout_seconds and not self.stop.is_set():
                    self._stalled(client, channel, last_bytes_wall)
                    last_bytes, last_bytes_wall = self.clock(), time.time()
                    quiet = True
                continue
            if not data:
                self._ended(channel)
                return
            last_bytes, last_bytes_wall = self.clock(), time.time()
            self.metrics.stream_bytes.inc(len(data))
            if skipping:
                cut = data.find(b"\n")
                if cut < 0:
                    continue
                data = data[cut + 1:]
                skipping = False
            partial += data
            cut = partial.rfind(b"\n")
            if cut >= 0:
                block = bytes(partial[:cut + 1])
                del partial[:cut + 1]
                if len(block) > limit:
                    block = self._drop_oversized(block)
                if block:
                    if quiet:
                        self.hooks.resumed(client)
                        quiet = False
                    self.hooks.deliver(block)
            if len(partial) > limit:
                self._oversized(len(partial))
                partial.clear()
                skipping = True

    def _drop_oversized(self, block: bytes) -> bytes:
        kept = []
        for line in block.splitlines(keepends=True):
            if len(line) > self.cfg.max_event_bytes:
                self._oversized(len(line))
            else:
                kept.append(line)
        return b"".join(kept)

    def _oversized(self, size: int) -> None:
        self.metrics.oversized_lines.inc()
        log.warning("oversized_line_skipped", server=self.server, bytes_seen=size,
                    max_event_bytes=self.cfg.max_event_bytes)

    def _ended(self, channel: paramiko.Channel) -> None:
        channel.status_event.wait(2.0)
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        stderr = b""
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        if status > 0:
            raise StreamEnded(status, stderr.decode("utf-8", "replace"))
        raise Reconnect("closed")

    def _stalled(self, client: paramiko.SSHClient, channel: paramiko.Channel, quiet_since_wall: float) -> None:
        self.metrics.stalls.inc()
        log.warning("stream_stalled", server=self.server, quiet_seconds=self.cfg.stall_timeout_seconds)
        try:
            self.metrics.gerrit_commands.labels("version").inc()
            probe = ssh.run(client, "gerrit version", self.probe_timeout)
        except (OSError, EOFError, paramiko.SSHException, TimeoutError) as exc:
            log.warning("stall_probe_failed", server=self.server, error=f"{type(exc).__name__}: {exc}")
            raise Reconnect("stall") from None
        if probe.status != 0:
            raise Reconnect("stall")
        try:
            missed = self.hooks.quiet_window(client, quiet_since_wall)
        except Exception as exc:  # the gap stays open and the backfill retries; the stream answered the probe
            log.warning("quiet_window_check_failed", server=self.server, error=f"{type(exc).__name__}: {exc}")
            return
        if missed is None:  # no answer in time: a new connection (its gap and backfill) decides, and frees the old
            log.warning("quiet_window_check_timed_out", server=self.server)
            raise Reconnect("stall")
        # Results the stream should have delivered, and it still has not said a word: dead. (Bytes waiting now
        # mean the backfill merely overtook the stream's own delivery of them.)
        if missed and not channel.recv_ready():
            log.warning("stream_silently_dead", server=self.server, missed_results=missed)
            raise Reconnect("dead-stream")
        log.info("stream_quiet_but_alive", server=self.server)
