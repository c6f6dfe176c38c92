"""Fault scenarios against the real daemon: the fault suite's test and ``bench/soak.py`` run them.

A generated stream flows from the Gerrit SSH test server to ``driverlog-daemon run`` (a subprocess, with its own
database file) while faults follow each other: abrupt drops (some mid-line), stalls, an outage with events
meanwhile, a silently dead stream, ``kill -9`` (once while a backfill runs), a backfill whose connection drops
half-way; Gerrit's clock may be skewed from ours. Every event is recorded in the server's index, so everything the
stream loses is there for ``gerrit query``. At the end the database is compared with what a reference
implementation of DriverLog's rules (written here, apart from the daemon's matcher) finds in the generated events.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driverlog_daemon.registry.load import Registry, load_registry
from driverlog_daemon.testing import wait_for
from driverlog_daemon.testing.gerrit import daemon_config, start_in
from driverlog_daemon.testing.receiver import Receiver, check
from driverlog_daemon.testing.samples import sample_events

FAULTS = ("drop", "drop-mid-line", "stall", "outage", "dead-stream", "kill", "kill-during-backfill",
          "backfill-drop", "dropped-output", "dropped-output-backfill-fails")


@dataclass
class Scenario:
    seed: int = 1
    events: int = 2000
    ci_share: float = 0.15
    skew: int = 0  # Gerrit's clock minus ours, seconds
    faults: list[tuple[int, str]] = field(default_factory=list)  # (before event index, fault)
    outage_seconds: float = 10.0
    stall_seconds: float = 2.5
    dead_seconds: float = 3.0
    pace: float = 0.004  # seconds between events
    #: (event index, jump) Gerrit's clock jumps once there: "ahead" one event an hour ahead, "month" one 30 days
    #: ahead, "back" every event from there on an hour behind (its clock was fast and is set right)
    jumps: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def suite(cls, skew: int) -> Scenario:
        """The fault suite's schedule: every fault, at least 10 drops, 2 stalls, 2 kills."""
        kinds = ["drop", "drop-mid-line"] * 5 + ["stall", "stall", "outage", "dead-stream", "kill",
                                                   "kill-during-backfill", "backfill-drop", "dropped-output",
                                                   "dropped-output-backfill-fails"]
        random.Random(skew).shuffle(kinds)
        n = 2000
        faults = [(100 + i * (n - 200) // len(kinds), k) for i, k in enumerate(kinds)]
        at = {k: i for i, k in faults}  # each jump is the last event before a fault that loses events
        return cls(seed=3, events=n, skew=skew, faults=faults,
                   jumps=[(at["outage"] - 1, "ahead"), (at["dead-stream"] - 1, "month"), (at["kill"] - 1, "back")])

    @classmethod
    def random(cls, seed: int) -> Scenario:
        rng = random.Random(seed)
        n = rng.randint(1500, 3000)
        kinds = [rng.choice(FAULTS) for _ in range(rng.randint(6, 16))]
        at = sorted(rng.sample(range(50, n - 50), len(kinds)))
        return cls(seed=seed, events=n, skew=rng.choice([-1, 1]) * rng.randint(0, 4 * 3600),
                   faults=list(zip(at, kinds, strict=True)), outage_seconds=rng.uniform(2, 10),
                   jumps=[(rng.choice(at) - 1, rng.choice(["ahead", "month", "back"]))])


@dataclass
class Outcome:
    expected: int
    recorded: int
    missing: int
    duplicated: int
    unexpected: int
    integrity: str
    status_mismatches: int
    open_gaps: int
    faults: list[str]
    seconds: float
    log: Path
    missing_examples: list[Any] = field(default_factory=list)
    transitions: int = 0  # in the final history
    deliveries: int = 0  # webhook requests the receiver got (retries and duplicates included)
    webhook_problems: list[str] = field(default_factory=list)  # receiver.check's findings

    @property
    def ok(self) -> bool:
        return (self.missing, self.duplicated, self.unexpected, self.status_mismatches, self.open_gaps) == (
            0, 0, 0, 0, 0) and self.integrity == "ok" and not self.webhook_problems

    def line(self) -> str:
        return (f"expected {self.expected}, recorded {self.recorded}: {self.missing} lost, {self.duplicated} doubled, "
                f"{self.unexpected} unexpected, driver_status mismatches {self.status_mismatches}, open gaps "
                f"{self.open_gaps}, integrity {self.integrity}; transitions {self.transitions}, "
                f"{len(self.webhook_problems)} lost or wrong on the webhook ({self.deliveries} requests); "
                f"{self.seconds:.0f} s; faults: {', '.join(self.faults)}")


# ----------------------------------------------------------------------------------------------- the reference


def reference(events: list[dict[str, Any]], registry: Registry) -> Counter[tuple[str, int, int, str, str, str]]:
    """(driver name, change, patch set, result, evidence, release) of every CI result in ``events``, by the
    rules of shared/docs/matching-rules.md applied directly (every driver, every line, re.search)."""
    releases = sorted(registry.releases, key=lambda r: r.start_epoch)
    out: Counter[tuple[str, int, int, str, str, str]] = Counter()
    for ev in events:
        for d, result, evidence, release in judge_event(ev, registry, releases):
            out[(d.name, int(ev["change"]["number"]), int(ev["patchSet"]["number"]), result, evidence, release)] = 1
    return out


def judge_event(ev: dict[str, Any], registry: Registry, releases: list[Any]) -> list[tuple[Any, str, str, str]]:
    """(driver, result, evidence, release) of each driver a ``comment-added`` event is a result for, by the rules
    applied directly (``releases``: the registry's, by start date)."""
    if ev.get("type") != "comment-added":
        return []
    out = []
    for d in registry.drivers:
        if d.ci is None or d.ci.account != ev["author"]["username"] or ev["change"]["project"] != d.review_project:
            continue
        release = _release(ev["change"]["branch"], ev["eventCreatedOn"], releases)
        if d.ci.success_pattern is None or d.ci.failure_pattern is None:
            vote = _vote(ev)
            if vote:
                out.append((d, vote[0], vote[1], release))
            continue
        body = re.sub(r"^Patch Set \d+:", "", ev["comment"]).strip()
        for text in body.split("\n"):
            if not text.strip():
                continue
            result = ("success" if re.search(d.ci.success_pattern, text)
                      else "failure" if re.search(d.ci.failure_pattern, text) else None)
            if result:
                out.append((d, result, text, release))
                break
    return out


def _vote(ev: dict[str, Any]) -> tuple[str, str] | None:
    """The vote rule (matching-rules.md, "The 2014 form"), directly: the first line's Verified vote, else (no
    ``Patch Set N:`` line) the event's Verified approval."""
    first = re.match(r"Patch Set \d+:([^\n]*)", ev["comment"])
    if first:
        votes = re.findall(r"(?:^|\s)((?:Verified|VRIF)([+-]\d+))(?=\s|$)", first.group(1))
        if not votes or int(votes[0][1]) == 0:
            return None
        return ("success" if int(votes[0][1]) > 0 else "failure"), votes[0][0]
    approvals = ev.get("approvals") or []
    if any("oldValue" in a for a in approvals):
        approvals = [a for a in approvals if "oldValue" in a]
    for a in approvals:
        if "Verified" in (a.get("type"), a.get("description")) or "VRIF" in (a.get("type"), a.get("description")):
            value = int(a["value"])
            label = "Verified" if "Verified" in (a.get("type"), a.get("description")) else a["type"]
            return None if value == 0 else (("success" if value > 0 else "failure"), f"{label}{value:+d}")
    return None


def _release(branch: str, t: int, releases: list[Any]) -> str:
    b = branch.lower()
    if b == "master":
        earlier = [r for r in releases if r.start_epoch < t]
        return (earlier[-1] if earlier else releases[-1]).id if releases else ""
    if "/" in b[1:]:
        x = b.split("/", 1)[1]
        return next((r.id for r in releases if x in (r.id.lower(), r.series)), "")
    return ""


# ------------------------------------------------------------------------------------------------------ the run


class FaultRun:
    def __init__(self, work: Path, scenario: Scenario, registry_path: Path, say: Callable[[str], None] = print,
                 stall_timeout: float = 1.0) -> None:
        self.work, self.scenario, self.say = work, scenario, say
        work.mkdir(parents=True, exist_ok=True)
        self.registry_path = registry_path
        self.registry = load_registry(registry_path)
        self.server = start_in(work).server
        self.db = work / "driverlog.sqlite"
        self.log = work / "daemon.log"
        self.config = daemon_config(work, self.server, username="faults", registry=registry_path, database=self.db,
                                    http_port=0, stall_timeout_seconds=stall_timeout, connect_timeout_seconds=3,
                                    keepalive_seconds=2, reconnect_max_delay_seconds=2,
                                    # Gerrit's time runs ~400x ours here: the default 10 minutes would span ~375
                                    # events and hide a gap opened in the wrong place
                                    backfill_overlap_minutes=1)
        # a webhook receiver that answers 500 now and then and sometimes hangs past the daemon's timeout
        secret = work / "webhook-secret"
        secret.write_text("soak-secret\n")
        self.receiver = Receiver(b"soak-secret", mode="flaky", hang_seconds=1.0, seed=scenario.seed)
        with self.config.open("a") as config:
            config.write(f'\n[[webhook]]\nname = "soak"\nurl = "{self.receiver.url}"\nsecret_file = "{secret}"\n'
                         "timeout_seconds = 0.4\nbackoff_base_seconds = 0.05\nbackoff_max_seconds = 0.5\n")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.faults_done: list[str] = []

    def start_daemon(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIVERLOG_", "NOTIFY_SOCKET"))}
        with self.log.open("ab") as log:
            self.daemon = subprocess.Popen([sys.executable, "-m", "driverlog_daemon", "run", "--config",
                                            str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait(lambda: self.server.stream_count >= 1, 30, "the daemon to subscribe")

    def kill9(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait(10)

    def stop_daemon(self) -> int:
        if self.daemon is None or self.daemon.poll() is not None:
            return self.daemon.returncode if self.daemon else 0
        self.daemon.send_signal(signal.SIGTERM)
        return self.daemon.wait(20)

    def _wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        problem = wait_for(predicate, timeout, what, self.daemon, self.log, interval=0.02)
        if problem:
            raise RuntimeError(problem)

    # ----------------------------------------------------------------------------------------------- faults

    def fault(self, kind: str, upcoming: list[dict[str, Any]]) -> None:
        """Inject one fault; events pushed meanwhile go to the index (and to the stream when it is up)."""
        s, server = self.scenario, self.server
        self.faults_done.append(kind)
        if kind == "drop":
            server.drop_connections()
        elif kind == "drop-mid-line" and upcoming:
            line = json.dumps(upcoming[0], separators=(",", ":")).encode()
            server.record_only(upcoming.pop(0))  # the stream gets half of it: only backfill has the rest
            server.push_raw(line[:len(line) // 2])
            time.sleep(0.05)
            server.drop_connections()
        elif kind == "stall":
            server.stall(True)
            self._push_for(s.stall_seconds, upcoming)
            server.stall(False)
        elif kind == "outage":  # Gerrit and the webhook receiver both down for a while
            server.refuse_connections(s.outage_seconds)
            server.drop_connections()
            self.receiver.down()
            self._push_for(s.outage_seconds, upcoming)
            self.receiver.up()
        elif kind == "dead-stream":
            server.kill_streams_silently(True)
            self._push_for(s.dead_seconds, upcoming)
            server.kill_streams_silently(False)
        elif kind == "kill":  # while the receiver holds a delivery, which it then drops unanswered
            self.receiver.hold()
            deadline = time.monotonic() + 20
            while self.receiver.holding == 0 and time.monotonic() < deadline and upcoming:
                self._push_for(0.05, upcoming)
            if self.receiver.holding:
                self.faults_done[-1] = "kill mid-delivery"
            self.kill9()
            self.receiver.release()
            self._push_for(0.5, upcoming)
            self.start_daemon()
        elif kind == "kill-during-backfill":
            server.hold_queries(True)
            server.drop_connections()  # the reconnect's backfill will wait on the held query
            self._wait(lambda: server.queries_waiting >= 1, 30, "a backfill to start")
            self.kill9()
            server.hold_queries(False)
            self._push_for(0.5, upcoming)
            self.start_daemon()
        elif kind.startswith("dropped-output"):  # Gerrit's queue overflowed: 3 events discarded, then the marker
            for _ in range(min(3, len(upcoming))):
                server.record_only(upcoming.pop(0))
            if kind == "dropped-output-backfill-fails":
                # the stream stays up but three backfills in a row fail: by the retry that works, the stream is
                # far more than the overlap past the gap, so only the gap's own window finds what was lost
                server.fail_queries(3, "exit")
            server.push_raw(b'{"type":"dropped-output"}\n')
        elif kind == "backfill-drop":
            server.fail_queries(1, "drop")
            server.drop_connections()
        self._wait(lambda: server.stream_count >= 1, 60, f"the daemon to reconnect after {kind}")

    def _push_for(self, seconds: float, upcoming: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if upcoming:
                self.server.push_event(upcoming.pop(0))
            time.sleep(self.scenario.pace * 10)

    # ------------------------------------------------------------------------------------------------- run

    def run(self, settle_timeout: float = 90.0) -> Outcome:
        started = time.monotonic()
        s = self.scenario
        now = int(time.time()) + s.skew
        events = list(sample_events(self.registry, s.events, seed=s.seed, start=now - int(s.events * 1.6),
                                    ci_share=s.ci_share))
        for at, jump in s.jumps:
            for ev in events[at:] if jump == "back" else events[at:at + 1]:
                ev["eventCreatedOn"] += {"ahead": 3600, "month": 30 * 86400, "back": -3600}[jump]
        expected = reference(events, self.registry)
        self.start_daemon()
        faults = sorted(s.faults)
        upcoming = list(events)
        while upcoming or faults:
            while faults and (faults[0][0] <= len(events) - len(upcoming) or not upcoming):
                self.fault(faults.pop(0)[1], upcoming)
            if upcoming:
                self.server.push_event(upcoming.pop(0))
            time.sleep(s.pace)
        try:
            self._wait(lambda: self._settled(len(expected)), settle_timeout, "every result and no open gap")
            self._wait(self._delivered, settle_timeout, "every webhook delivery")
        except RuntimeError:
            pass  # the outcome says what is missing
        code = self.stop_daemon()
        outcome = self._compare(expected, time.monotonic() - started)
        if code != 0:
            outcome.faults.append(f"exit status {code}")
        return outcome

    def _delivered(self) -> bool:
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return False
        try:
            (pending,) = conn.execute("SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL").fetchone()
            return bool(pending == 0)
        except sqlite3.Error:
            return False
        finally:
            conn.close()

    def _settled(self, expected: int) -> bool:
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return False
        try:
            (n,) = conn.execute("SELECT count(*) FROM verifications").fetchone()
            (gaps,) = conn.execute("SELECT count(*) FROM gaps WHERE closed_at IS NULL").fetchone()
            return bool(n >= expected and gaps == 0)
        except sqlite3.Error:
            return False
        finally:
            conn.close()

    def _compare(self, expected: Counter[tuple[str, int, int, str, str, str]], seconds: float) -> Outcome:
        conn = sqlite3.connect(self.db)
        try:
            got: Counter[tuple[str, int, int, str, str, str]] = Counter(conn.execute(
                """SELECT d.name, v.change_number, v.patch_set, v.result, v.evidence, v.release
                   FROM verifications v JOIN drivers d ON d.id = v.driver_id"""))
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            status = {(n, r): (c, sc) for n, r, c, sc in conn.execute(
                "SELECT d.name, s.release, s.verifications, s.successes FROM driver_status s "
                "JOIN drivers d ON d.id = s.driver_id")}
            (gaps,) = conn.execute("SELECT count(*) FROM gaps WHERE closed_at IS NULL").fetchone()
            transitions = {r[0]: r for r in conn.execute("SELECT * FROM mark_transitions")}
        finally:
            conn.close()
        received = self.receiver.deliveries()
        want: dict[tuple[str, str], tuple[int, int]] = {}
        for (name, _, _, result, _, release), _n in expected.items():
            c, sc = want.get((name, release), (0, 0))
            want[(name, release)] = (c + 1, sc + (result == "success"))
        mismatches = sum(1 for k in set(want) | set(status) if want.get(k) != status.get(k))
        return Outcome(expected=sum(expected.values()), recorded=sum(got.values()),
                       missing=sum(1 for k in expected if k not in got),
                       duplicated=sum(n - 1 for n in got.values() if n > 1),
                       unexpected=sum(1 for k in got if k not in expected), integrity=str(integrity),
                       status_mismatches=mismatches, open_gaps=int(gaps), faults=list(self.faults_done),
                       seconds=seconds, log=self.log, missing_examples=[k for k in expected if k not in got][:5],
                       transitions=len(transitions), deliveries=len(received),
                       webhook_problems=check(received, transitions))

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
        self.server.stop()
        self.receiver.close()
