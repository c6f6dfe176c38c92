"""A Gerrit SSH test server: a real SSH server (paramiko's server mode) on 127.0.0.1 that speaks the parts of
Gerrit's SSH interface the daemon uses. It powers the tests and ``make demo``.

Exec commands: ``gerrit stream-events [-s TYPE]...``, ``gerrit query --format=JSON ... QUERY`` and
``gerrit version``; anything else fails with exit status 1 and an error on stderr, as Gerrit does.

Controls (for tests and the demo): :meth:`push_event` (streamed to every subscriber and recorded as a review
message on its change, so that ``gerrit query`` sees what the stream missed), :meth:`push_raw`,
:meth:`drop_connections`, :meth:`stall` (keep connections, answer nothing), :meth:`refuse_connections`,
:meth:`kill_streams_silently` (stream channels stay open but get nothing while the transport still answers),
:meth:`fail_stream_events` (``stream-events`` exits non-zero, like an account without the capability),
:meth:`fail_queries` (queries exit non-zero, or their connection drops half-way), :meth:`hold_queries`.
"""

from __future__ import annotations

import json
import queue
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import paramiko

from driverlog_daemon.testing.gerrit.index import ChangeIndex
from driverlog_daemon.testing.gerrit.query import QueryArguments, QueryError
from driverlog_daemon.testing.gerrit.transport import Interface, Transport

GERRIT_VERSION = "3.10.2-driverlog-test"


@dataclass
class _Stream:
    channel: paramiko.Channel
    types: frozenset[str]
    outbox: queue.Queue[bytes | None] = field(default_factory=queue.Queue)


class GerritTestServer:
    def __init__(self, host_key: paramiko.PKey, authorized_keys: Iterable[paramiko.PKey], *,
                 host: str = "127.0.0.1", port: int = 0, message_skew: int = 1) -> None:
        self.host_key = host_key
        self.authorized_keys = list(authorized_keys)
        self.index = ChangeIndex()
        self.message_skew = message_skew  # review-message timestamps trail eventCreatedOn, as on real servers
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self.host, self.port = self._sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._transports: list[paramiko.Transport] = []
        self._streams: list[_Stream] = []
        self._stopped = threading.Event()
        self._stalled = threading.Event()
        self._streams_dead = False
        self._refuse_until = 0.0
        self._stream_failure: tuple[int, str] | None = None
        self._query_faults: list[str] = []  # what the next queries do: "exit" (status 1) or "drop" (half, then cut)
        self._queries_held = threading.Event()
        self._hold_matching: re.Pattern[str] | None = None
        self._hold_after = 0
        self.queries_waiting = 0
        self.connections = 0
        self.commands: list[str] = []
        self.stream_subscribed = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="gerrit-test-accept")

    # --------------------------------------------------------------------------------------- lifecycle

    def start(self) -> GerritTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._stalled.clear()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress
        except OSError:
            pass
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join(5)
        self.drop_connections()

    def __enter__(self) -> GerritTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # ---------------------------------------------------------------------------------------- controls

    def push_event(self, event: dict[str, Any]) -> None:
        """Stream ``event`` to every subscriber and record it on its change for ``gerrit query``."""
        self.index.record(event, self.message_skew)
        self._broadcast(json.dumps(event, separators=(",", ":")).encode() + b"\n", str(event.get("type", "")))

    def push_raw(self, data: bytes) -> None:
        """Send bytes as they are to every stream (partial lines, garbage, several events at once)."""
        self._broadcast(data, None)

    def record_only(self, event: dict[str, Any]) -> None:
        """Record an event on its change without streaming it (an event the stream lost)."""
        self.index.record(event, self.message_skew)

    def drop_connections(self) -> None:
        with self._lock:
            transports, self._transports = self._transports, []
            streams, self._streams = self._streams, []
        for s in streams:
            s.outbox.put(None)
        for t in transports:
            try:
                t.sock.shutdown(socket.SHUT_RDWR)  # abrupt: no channel close, no exit status
            except OSError:
                pass
            t.close()

    def stall(self, on: bool = True) -> None:
        """Keep every connection open but answer nothing: no stream bytes, exec requests hang."""
        if on:
            self._stalled.set()
        else:
            self._stalled.clear()

    def refuse_connections(self, seconds: float) -> None:
        self._refuse_until = time.monotonic() + seconds

    def kill_streams_silently(self, on: bool = True) -> None:
        """Stream channels stay open but receive nothing; the transport and other commands still answer."""
        self._streams_dead = on

    def fail_stream_events(self, status: int | None = 1,
                           message: str = "fatal: not permitted to run stream-events (capability streamEvents)"
                           ) -> None:
        self._stream_failure = None if status is None else (status, message)

    def fail_queries(self, count: int = 1, mode: str = "exit") -> None:
        """The next ``count`` queries fail: ``exit`` answers status 1, ``drop`` sends half of the output and then
        drops the whole connection abruptly (a backfill whose connection dies half-way). ``count`` 0: the faults
        still to come are forgotten (Gerrit recovers)."""
        with self._lock:
            if count == 0:
                self._query_faults.clear()
            self._query_faults.extend([mode] * count)

    def hold_queries(self, on: bool = True, *, after: int = 0, matching: str = "") -> None:
        """Queries wait (answer nothing) while held: a backfill in progress, for as long as a test likes. With
        ``matching`` (a regular expression), only the queries whose text it finds are held, and the first ``after``
        of those still pass (a daemon stopped in the middle of its work, at a place a test chooses)."""
        with self._lock:
            self._hold_matching, self._hold_after = (re.compile(matching) if matching else None), after
        if on:
            self._queries_held.set()
        else:
            self._queries_held.clear()

    def _held(self, query: str) -> bool:
        """Whether this query waits (counting it among those matching)."""
        if not self._queries_held.is_set():
            return False
        with self._lock:
            if self._hold_matching is None:
                return True
            if not self._hold_matching.search(query):
                return False
            self._hold_after -= 1
            return self._hold_after < 0

    def wait_for_streams(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``count`` stream-events channels are subscribed."""
        with self.stream_subscribed:
            return self.stream_subscribed.wait_for(lambda: len(self._streams) >= count, timeout)

    @property
    def stream_count(self) -> int:
        with self._lock:
            return len(self._streams)

    # ---------------------------------------------------------------------------------------- plumbing

    def _broadcast(self, data: bytes, kind: str | None) -> None:
        if self._stalled.is_set() or self._streams_dead:
            return
        with self._lock:
            streams = list(self._streams)
        for s in streams:
            if kind is None or not s.types or kind in s.types or kind == "dropped-output":
                s.outbox.put(data)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="gerrit-test-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        transport = Transport(conn)
        transport.add_server_key(self.host_key)
        with self._lock:
            self._transports.append(transport)
            self.connections += 1
        try:
            transport.start_server(server=Interface(self.authorized_keys, self._run_command))
        except (paramiko.SSHException, EOFError, OSError):
            transport.close()

    def _run_command(self, channel: paramiko.Channel, command: str, replied: threading.Event) -> None:
        with self._lock:
            self.commands.append(command)
        replied.wait(10)
        try:
            if self._stalled.is_set():
                while self._stalled.is_set() and not self._stopped.is_set():
                    time.sleep(0.02)
                return
            try:
                argv = shlex.split(command)
            except ValueError as exc:
                self._finish(channel, 1, stderr=f"fatal: {exc}\n")
                return
            if argv[:2] == ["gerrit", "stream-events"]:
                self._stream_events(channel, argv[2:])
            elif argv[:2] == ["gerrit", "query"]:
                self._query(channel, argv[2:])
            elif argv[:2] == ["gerrit", "version"]:
                self._finish(channel, 0, stdout=f"gerrit version {GERRIT_VERSION}\n")
            else:
                name = " ".join(argv[:2]) or command
                self._finish(channel, 1, stderr=f"fatal: {name}: not found\n")
        except (OSError, EOFError, paramiko.SSHException):
            pass

    @staticmethod
    def _finish(channel: paramiko.Channel, status: int, stdout: str = "", stderr: str = "") -> None:
        if stdout:
            channel.sendall(stdout.encode())
        if stderr:
            channel.sendall_stderr(stderr.encode())
        channel.send_exit_status(status)
        channel.close()

    def _stream_events(self, channel: paramiko.Channel, args: list[str]) -> None:
        if self._stream_failure is not None:
            status, message = self._stream_failure
            self._finish(channel, status, stderr=message + "\n")
            return
        types: set[str] = set()
        it = iter(args)
        for a in it:
            if a in ("-s", "--subscribe"):
                types.add(next(it, ""))
            elif a.startswith("--subscribe="):
                types.add(a.split("=", 1)[1])
        stream = _Stream(channel, frozenset(types))
        with self.stream_subscribed:
            self._streams.append(stream)
            self.stream_subscribed.notify_all()
        try:
            while not self._stopped.is_set():
                try:
                    data = stream.outbox.get(timeout=0.2)
                except queue.Empty:
                    if channel.closed or not channel.get_transport() or not channel.get_transport().is_active():
                        return
                    continue
                if data is None:
                    return
                channel.sendall(data)
        finally:
            with self._lock:
                if stream in self._streams:
                    self._streams.remove(stream)
            try:
                channel.close()
            except (OSError, EOFError):
                pass

    def _query(self, channel: paramiko.Channel, args: list[str]) -> None:
        try:
            parsed = QueryArguments.parse(args)
        except QueryError as exc:
            self._finish(channel, 1, stderr=f"fatal: {exc}\n")
            return
        terms, start, options = parsed.terms, parsed.start, parsed.options
        held = self._held(" ".join(terms))
        with self._lock:
            self.queries_waiting += held
        try:
            while held and self._queries_held.is_set() and not self._stopped.is_set() and not channel.closed:
                time.sleep(0.02)
        finally:
            with self._lock:
                self.queries_waiting -= held
        with self._lock:
            fault = self._query_faults.pop(0) if self._query_faults else None
        if fault == "exit":
            self._finish(channel, 1, stderr="fatal: internal server error (test fault)\n")
            return
        started = time.monotonic()
        try:
            page, more = self.index.query(" ".join(terms), start)
        except QueryError as exc:
            self._finish(channel, 0, stdout=json.dumps({"type": "error", "message": str(exc)}) + "\n")
            return
        out = [json.dumps(c.row(comments="--comments" in options,
                                current_patch_set="--current-patch-set" in options,
                                patch_sets=bool(options & {"--patch-sets", "--all-approvals"})),
                          separators=(",", ":")) for c in page]
        out.append(json.dumps({"type": "stats", "rowCount": len(page),
                               "runTimeMilliseconds": int((time.monotonic() - started) * 1000),
                               "moreChanges": more}, separators=(",", ":")))
        text = "\n".join(out) + "\n"
        if fault == "drop":
            channel.sendall(text[:len(text) // 2].encode())
            transport = channel.get_transport()
            if transport is not None:
                try:
                    transport.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                transport.close()
            return
        self._finish(channel, 0, stdout=text)
