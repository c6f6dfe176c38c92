"""``driverlog-daemon demo``: the real daemon against the project's Gerrit SSH test server, on loopback.

It makes keys and a known_hosts file in a work folder, starts the test server with three weeks of history
(which the daemon's first start imports), runs ``driverlog-daemon run`` as a subprocess with the shipped
registry, feeds the server a realistic live stream (with a ``dropped-output`` and a short outage on the way,
both repaired by backfill), then shows what the daemon recorded — its log, the database — and keeps serving
the status page, the API, badges, ``/metrics`` and ``/healthz`` on 127.0.0.1 until Ctrl-C (or ``--serve-seconds``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from driverlog_daemon.config import GerritConfig
from driverlog_daemon.registry.checks import DEFAULT_REGISTRY_PATH
from driverlog_daemon.registry.load import Registry, load_registry
from driverlog_daemon.store import reads, schema
from driverlog_daemon.testing import wait_for
from driverlog_daemon.testing.events import other_event
from driverlog_daemon.testing.gerrit import daemon_config, start_in
from driverlog_daemon.testing.history import history
from driverlog_daemon.testing.net import free_port
from driverlog_daemon.testing.samples import sample_events

HISTORY_DAYS, HISTORY_CHANGES = 21, 300  # past at-risk's 14 days, so every health measure has a value


def _say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def _ci_only(registry: Registry, n: int, seed: int, start: int) -> list[dict[str, Any]]:
    return [e for e in sample_events(registry, n * 4, seed=seed, start=start, ci_share=0.5)
            if e["type"] == "comment-added" and e["author"]["username"] in registry.by_account][:n]


class Demo:
    def __init__(self, work: Path, http_port: int, registry_path: Path) -> None:
        self.work = work
        self.registry_path = registry_path
        self.registry = load_registry(registry_path)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        self.server = start_in(work).server
        self.http_port = free_port(http_port)
        self.db = work / "driverlog.sqlite"
        self.log_path = work / "daemon.log"
        self.config = daemon_config(work, self.server, username="driverlog-demo", registry=registry_path,
                                    database=self.db, http_port=self.http_port, stall_timeout_seconds=20)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.subscribed = set(GerritConfig().subscribe)
        self.pushed = 0
        self.recorded: list[dict[str, Any]] = []  # everything Gerrit saw, streamed or not: saved for replay
        self.lost: list[dict[str, Any]] = []  # the CI results the stream never delivered (dropped, the outage)

    # ---------------------------------------------------------------------------------------- steps

    def seed_history(self, days: int, changes: int) -> None:
        """``days`` of Gerrit before now: changes of the review projects (and of one other), their CI results
        with rechecks, merges and abandons. The first start imports them as history, so the page has marks and
        every CI health measure (which reach back 7 to 90 days, at-risk 14) from the start."""
        for ev in history(self.registry, days=days, changes=changes, end=int(time.time()) - 600, starts=0.1,
                          flips=1.0):
            self._record(ev)

    def _record(self, event: dict[str, Any]) -> None:
        self.recorded.append(event)
        self.server.record_only(event)

    def _push(self, event: dict[str, Any]) -> None:
        self.recorded.append(event)
        self.server.push_event(event)

    def save_recording(self) -> Path:
        """What Gerrit saw, as ``gerrit stream-events`` lines in time order: ``replay`` reads it."""
        path = self.work / "gerrit-events.jsonl"
        with path.open("w") as out:
            for ev in sorted(self.recorded, key=lambda e: int(e["eventCreatedOn"])):
                out.write(json.dumps(ev, separators=(",", ":")) + "\n")
        return path

    def start_daemon(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIVERLOG_", "NOTIFY_SOCKET"))}
        log = self.log_path.open("wb")
        self.daemon = subprocess.Popen([sys.executable, "-m", "driverlog_daemon", "run", "--config", str(self.config)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.work)
        if not self.server.wait_for_streams(1, timeout=30):
            raise SystemExit(f"the daemon did not subscribe to the stream; see {self.log_path}")
        self._wait(lambda: self._get("/healthz") is not None, 20, "HTTP to listen")

    def feed(self, count: int, pace: float, outage: float) -> None:
        now = int(time.time())
        # about 1.5 s between sample events on average: the stream ends near "now"
        events = list(sample_events(self.registry, count, seed=11, start=now - int(count * 1.6), ci_share=0.15))
        third = len(events) // 3
        for i, ev in enumerate(events):
            if i == third:
                _say("Gerrit's queue overflows: 3 CI results are discarded, then {\"type\":\"dropped-output\"}")
                for lost in _ci_only(self.registry, 3, seed=21, start=int(ev["eventCreatedOn"])):
                    self._record(lost)
                    self.lost.append(lost)
                self.server.push_raw(b'{"type":"dropped-output"}\n')
                self.pushed += 1
            if i == 2 * third:
                self.wait_caught_up()  # what is in flight when the connection drops is lost, as with Gerrit
                _say(f"outage: the connection drops, Gerrit refuses connections for {outage:g} s, "
                     "3 CI results happen meanwhile")
                self.server.refuse_connections(outage)
                self.server.drop_connections()
                for lost in _ci_only(self.registry, 3, seed=31, start=int(ev["eventCreatedOn"])):
                    self._record(lost)
                    self.lost.append(lost)
                self._wait(lambda: self.server.stream_count >= 1, 30, "the daemon to reconnect")
            self._push(ev)
            if ev["type"] in self.subscribed:  # the server filters the rest out, as Gerrit does for -s
                self.pushed += 1
            time.sleep(pace)

    def wait_caught_up(self) -> None:
        def caught_up() -> bool:
            m = self._metrics()
            return sum(v for k, v in m.items() if k.startswith("driverlog_events_total")) >= self.pushed
        self._wait(caught_up, 60, "the daemon to process every event")

    def wait_backfills_done(self) -> None:
        """Every backfill started (start, dropped-output, reconnect) has logged its summary."""
        def done() -> bool:
            m = self._metrics()
            started = sum(v for k, v in m.items() if k.startswith("driverlog_backfills_total"))
            finished = sum(1 for raw in self.log_path.read_text().splitlines() if '"backfill_' in raw
                           and ('"backfill_done"' in raw or '"backfill_failed"' in raw))
            return started > 0 and finished >= started
        self._wait(done, 60, "the backfills to finish")

    def wait_history_imported(self) -> None:
        def imported() -> bool:
            body = self._get("/healthz")
            return body is not None and not json.loads(body).get("history", {}).get("importing", True)
        self._wait(imported, 120, "the history import to finish")

    # -------------------------------------------------------------------------------------- showing

    def show(self) -> None:
        events = []
        for raw in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(raw))
            except ValueError:
                continue
        _say(f"the daemon's log ({self.log_path}): {len(events)} lines")
        for name, n in Counter(e.get("event") for e in events).most_common():
            print(f"    {n:4d}  {name}")
        interesting = {"stream_connected", "backfill_done", "dropped_output", "reconnect_scheduled",
                       "connection_lost", "backfill_gap_exceeds_max_age"}
        print("  key lines:")
        for e in events:
            if e.get("event") in interesting:
                detail = {k: v for k, v in e.items() if k not in ("event", "timestamp", "level")}
                print(f"    {e.get('timestamp', '')[11:19]} {e['event']:<22} {json.dumps(detail)[:110]}")
        conn = schema.connect(self.db, readonly=True)
        try:
            s = reads.summary(conn)
            _say(f"the database ({self.db})")
            print(f"    drivers {s['drivers']}, verifications {s['verifications']} "
                  f"(by source {s['by_source']}, by result {s['by_result']}), driver_status rows {s['driver_status']}")
            print(f"    changes {s['changes']}, DriverLog marks {s['driver_marks']}")
            lost = {(e["change"]["number"], e["patchSet"]["number"]): int(e["eventCreatedOn"]) for e in self.lost}
            recovered = sum(1 for number, ps, at in conn.execute(  # a message's time is its event's, give or take
                "SELECT change_number, patch_set, comment_time FROM verifications WHERE source = 'backfill'")
                if abs(lost.get((number, ps), -99) - at) <= 5)
            imported = dict(s["by_source"]).get("backfill", 0) - recovered
            print(f"    backfills recovered {recovered} results from the {len(self.lost)} CI comments the stream "
                  f"did not deliver (the dropped output, the outage); the first start imported {imported} more "
                  f"from the {HISTORY_DAYS} days before it")
            print("  SELECT vendor, driver, release, result, comment_at FROM driverlog_marks (DriverLog's marks):")
            rows = conn.execute("SELECT vendor, driver, release, result, comment_at FROM driverlog_marks "
                                "ORDER BY comment_at DESC LIMIT 12").fetchall()
            for vendor, driver, release, result, at in rows:
                print(f"    {vendor[:22]:<22} {driver[:34]:<34} {release or '-':<10} {result:<8} {at}")
        finally:
            conn.close()
        recording = self.save_recording()
        _say(f"what Gerrit saw, as stream-events lines: {recording}")
        print(f"    try: .venv/bin/driverlog-daemon replay {recording} --database {self.work / 'replayed.sqlite'}")
        m = self._metrics()
        _say("metrics (a few of them)")
        for key in sorted(m):
            if key.startswith(("driverlog_verifications_recorded_total", "driverlog_backfills_total",
                               "driverlog_gerrit_reconnects_total", "driverlog_gerrit_connected ",
                               "driverlog_gerrit_dropped_output_total ")):
                print(f"    {key} {m[key]:g}")

    def serve(self, seconds: float | None) -> None:
        base = f"http://127.0.0.1:{self.http_port}"
        _say("serving" + (f" for {seconds:g} s" if seconds is not None else " — Ctrl-C to stop"))
        for path, what in (("/", "the status page"), ("/api/1.0/drivers", "DriverLog's JSON API"),
                           ("/badge/1.svg", "a badge"), ("/feed.atom", "an Atom feed of mark changes"),
                           ("/export/marks.csv", "the mark history as CSV"), ("/metrics", "Prometheus metrics"),
                           ("/healthz", "health")):
            print(f"    {base}{path:<20} {what}")
        deadline = None if seconds is None else time.monotonic() + seconds
        next_event = time.monotonic()
        try:
            while deadline is None or time.monotonic() < deadline:
                if self.daemon is not None and self.daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited ({self.daemon.returncode}); see {self.log_path}")
                if time.monotonic() >= next_event:  # a real Gerrit is never quiet for long: no stall while it serves
                    self._push(other_event(created_on=int(time.time())))
                    next_event = time.monotonic() + 5.0
                time.sleep(0.2)
        except KeyboardInterrupt:
            print()

    def stop(self) -> int:
        code = 0
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                code = self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                code = 1
        self.server.stop()
        self.save_recording()
        _say(f"daemon stopped (exit status {code}); the database stays in {self.db}")
        return code

    # -------------------------------------------------------------------------------------- helpers

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return bytes(r.read())
        except OSError:
            return None

    def _metrics(self) -> dict[str, float]:
        body = self._get("/metrics") or b""
        out = {}
        for raw in body.decode().splitlines():
            if raw and not raw.startswith("#"):
                key, _, value = raw.rpartition(" ")
                out[key] = float(value)
        return out

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        problem = wait_for(predicate, timeout, what, self.daemon, self.log_path, interval=0.1)
        if problem:
            raise SystemExit(problem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="driverlog-daemon demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo-run", help="work folder, emptied first (default: ./demo-run)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port on 127.0.0.1 (default 8080, else any)")
    parser.add_argument("--events", type=int, default=600, help="live events to stream (default 600)")
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between live events (default 0.01)")
    parser.add_argument("--outage-seconds", type=float, default=3.0, help="how long Gerrit refuses connections")
    parser.add_argument("--serve-seconds", type=float, default=None,
                        help="stop after serving this long (default: until Ctrl-C; env DEMO_SERVE_SECONDS)")
    parser.add_argument("--registry", default=str(DEFAULT_REGISTRY_PATH), help="registry (default: shipped)")
    args = parser.parse_args(argv)
    serve = args.serve_seconds
    if serve is None and os.environ.get("DEMO_SERVE_SECONDS"):
        serve = float(os.environ["DEMO_SERVE_SECONDS"])
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # the test server's side of dropped connections
    demo = Demo(Path(args.work).resolve(), args.port, Path(args.registry))
    try:
        _say(f"Gerrit SSH test server on {demo.server.host}:{demo.server.port} with {HISTORY_DAYS} days of history")
        demo.seed_history(HISTORY_DAYS, HISTORY_CHANGES)
        _say(f"starting: driverlog-daemon run --config {demo.config}")
        demo.start_daemon()
        _say(f"streaming {args.events} live events (about 15% CI results from the registry's CI accounts)")
        demo.feed(args.events, args.pace, args.outage_seconds)
        demo.wait_caught_up()
        demo.wait_backfills_done()
        demo.wait_history_imported()
        demo.show()
        demo.serve(serve)
    finally:
        code = demo.stop()
    return code
