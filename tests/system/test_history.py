"""History as DriverLog answers it: a first start on a year and a half of Gerrit history finds every mark
DriverLog's poll would, at less than one poll's cost in queries; what it shows is DriverLog's mark exactly.

The history lives in the Gerrit SSH test server's index (what ``gerrit query`` answers); the marks to expect are
worked out from the same events by ``testing/history.py``, apart from the daemon's code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.registry.load import Registry, load_registry
from driverlog_daemon.store import reads, reads_health
from driverlog_daemon.testing import DATA, wait_until
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.gerrit.setup import SSHEnv
from driverlog_daemon.testing.harness import Harness
from driverlog_daemon.testing.history import Mark, driverlog_marks, history, poll_cost

DAYS = 540


def seed(env: SSHEnv, registry: Registry, *, changes: int = 800, ci_rate: float = 0.2,
         seed: int = 7) -> list[dict[str, Any]]:
    """A year and a half of history, in the test server's index only (the stream says nothing of it). The server
    answers at most 25 rows a query (Gerrit's queryLimit): the import pages, and its stop rule decides on almost
    every page."""
    env.server.index.query_limit = 25
    # it ends two days ago: all of it is history for the first start (a day's margin before it is news)
    events = history(registry, days=DAYS, changes=changes, end=int(time.time()) - 2 * 86400, seed=seed,
                     ci_rate=ci_rate)
    for event in events:
        env.server.record_only(event)
    return events


def marks(db: Path) -> dict[tuple[str, str, str, str], Mark]:
    """The file's marks of the drivers in the registry, as the oracle writes them."""
    return {(p, v, n, r): Mark(t, c, ps, sha, result) for p, v, n, r, t, c, ps, sha, result in query(
        db, """SELECT d.project_id, d.vendor, d.name, m.release, m.comment_time, m.change_number, m.patch_set,
                      m.comment_sha256, m.result
               FROM driver_marks m JOIN drivers d ON d.id = m.driver_id WHERE d.removed_at IS NULL""")}


def active(registry: Registry, oracle: dict[tuple[str, str, str, str], Mark]) -> dict[tuple[str, str, str, str], Mark]:
    """The marks DriverLog's poll looks for: the active releases'."""
    ids = {r.id for r in registry.releases if r.active}
    return {k: v for k, v in oracle.items() if k[3] in ids}


def gerrit_queries(env: SSHEnv) -> int:
    return sum(1 for c in env.server.commands if c.startswith("gerrit query"))


def same(mark: Mark | None) -> tuple[Any, ...] | None:
    """A mark as the comparison sees it: its verification (change, patch set, comment) and result. Its comment time
    is the event's for a comment read from the stream and the review message's from ``gerrit query``, which the
    test server writes a second later (as real servers do): the comment, not the second, is compared."""
    return None if mark is None else (mark.change_number, mark.patch_set, mark.sha256, mark.result)


def check_marks(db: Path, registry: Registry, events: list[dict[str, Any]]) -> None:
    oracle = {k: same(v) for k, v in driverlog_marks(events, registry).items()}
    got = {k: same(v) for k, v in marks(db).items()}
    ids = {r.id for r in registry.releases if r.active}
    wanted = {k: v for k, v in oracle.items() if k[3] in ids}
    assert {k: got.get(k) for k in wanted} == wanted  # every mark DriverLog's poll would show
    assert {k: oracle.get(k) for k in got} == got  # and every mark shown is DriverLog's mark exactly


def test_the_first_start_finds_every_mark_driverlog_would(ssh_env: SSHEnv, tmp_path: Path,
                                                          registry: Registry) -> None:
    """…and what happened before it is history, recorded and not sent; what happened within a day of it is news."""
    from driverlog_daemon.testing.events import ci_event

    events = seed(ssh_env, registry)
    oracle = driverlog_marks(events, registry)
    old = sum(1 for m in active(registry, oracle).values() if m.comment_time < time.time() - 90 * 86400)
    assert old >= 20  # the history is one whose marks a 90-day window alone would miss
    recent = int(time.time()) - 2 * 3600  # two results of the last hours, of opposite verdicts: one flips a mark
    for number, result in ((990001, "FAILURE"), (990002, "SUCCESS")):
        for event in (ci_event(number, recent, result), _merged(number, recent + 60, ps=2)):
            ssh_env.server.record_only(event)
            events.append(event)
        recent += 600
    with Harness(ssh_env, tmp_path, webhooks=(_hook(tmp_path),)) as h:
        assert wait_until(h.settled, timeout=60)
        check_marks(h.db, registry, events)
        delivered = {t for (t,) in query(h.db, "SELECT transition_id FROM webhook_outbox")}
        for tid, cause, at in query(h.db, "SELECT id, cause, at FROM mark_transitions"):
            news = at >= time.time() - 86400
            assert (tid in delivered) == news and (cause == "import") != news, (tid, cause, at)
        assert delivered  # one of the two recent results is news
        (kind, finished, bindings, done), = query(
            h.db, "SELECT kind, finished_at, bindings, bindings_done FROM imports")
        assert (kind, bindings, done) == ("first", registry.ci_bindings, registry.ci_bindings) and finished
        assert gerrit_queries(ssh_env) < poll_cost(registry)
        # the window proves the file complete 90 days back: Cinder's 14-day rule has an answer for every driver
        with h.service.reader.snapshot() as conn:
            horizon = reads_health.horizon(conn)
            healths = reads_health.registered_ci_health(conn, time.time(), 14)
        assert horizon is not None and horizon <= time.time() - 89 * 86400
        assert healths and all(health["at_risk"] is not None for _, health in healths)


def test_the_first_start_on_the_upstream_registry(ssh_env: SSHEnv, tmp_path: Path, upstream_registry: Registry,
                                                  ) -> None:
    """DriverLog's own registry (221 drivers, 147 CI bindings, 79 accounts) with three current releases."""
    import json

    doc = json.loads(Path(upstream_registry.source).read_text())
    doc["releases"] += [{"id": "Flamingo", "wiki": "https://wiki.openstack.org/wiki/Flamingo",
                         "start": "2025-Apr-02", "active": True, "series": "2025.2"},
                        {"id": "Gazpacho", "wiki": "https://wiki.openstack.org/wiki/Gazpacho",
                         "start": "2025-Oct-01", "active": True, "series": "2026.1"},
                        {"id": "Hibiscus", "wiki": "https://wiki.openstack.org/wiki/Hibiscus",
                         "start": "2026-Apr-01", "active": True, "series": "2026.2"}]
    path = tmp_path / "upstream.json"
    path.write_text(json.dumps(doc))
    registry = load_registry(path)
    events = seed(ssh_env, registry, changes=1500, ci_rate=0.2, seed=11)
    with Harness(ssh_env, tmp_path, registry=path, max_queries_per_minute=0) as h:  # as measured: no ceiling
        assert wait_until(h.settled, timeout=120)
        check_marks(h.db, registry, events)
        assert gerrit_queries(ssh_env) < poll_cost(registry)


@pytest.fixture
def registry() -> Registry:
    return load_registry(DATA)


# ------------------------------------------------------------------------------------------ registry changes

CYBERDYNE, INITECH, GLOBEX, UMBRELLA = ("Cyberdyne T-Series NFS", "Initech FlashBlade NVMe-TCP",
                                        "Globex ML2 Mechanism Driver", "Umbrella HyperScale")


def driver_entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in doc["drivers"] if d["name"] == name)


def release_entry(doc: dict[str, Any], release: str) -> dict[str, Any]:
    return next(r for r in doc["releases"] if r["id"] == release)


def registries() -> list[tuple[str, dict[str, Any]]]:
    """The registry as DriverLog's maintainers fix it, one kind of change at a time: (what changed, the document).
    The last but one is the registry the history was written with; the last removes a driver."""
    import copy
    import json

    good = json.loads(DATA.read_text())
    driver_entry(good, CYBERDYNE)["ci"] = {"id": "cyberdyne-ci", "success_pattern": r"cyberdyne-nfs \S+ : SUCCESS",
                                           "failure_pattern": r"cyberdyne-nfs \S+ : FAILURE"}
    driver_entry(good, CYBERDYNE)["releases"] = ["Flamingo", "Gazpacho"]
    release_entry(good, "Epoxy")["active"] = True
    doc = copy.deepcopy(good)  # broken in each way, then fixed one way at a time
    del driver_entry(doc, CYBERDYNE)["ci"]
    driver_entry(doc, INITECH)["ci"]["success_pattern"] = r"initech-nvme-tcp-tempest \S+ : PASSED"
    del driver_entry(doc, GLOBEX)["repo"]
    gazpacho = release_entry(doc, "Gazpacho")
    doc["releases"].remove(gazpacho)
    for d in doc["drivers"]:
        d["releases"] = [r for r in d.get("releases", []) if r != "Gazpacho"]
    release_entry(doc, "Flamingo")["series"] = "2025.3"
    release_entry(doc, "Epoxy")["active"] = False
    steps = [("as first applied", copy.deepcopy(doc))]

    def step(what: str) -> None:
        steps.append((what, copy.deepcopy(doc)))

    driver_entry(doc, CYBERDYNE)["ci"] = driver_entry(good, CYBERDYNE)["ci"]
    step("a new CI binding (and account)")
    driver_entry(doc, INITECH)["ci"] = driver_entry(good, INITECH)["ci"]
    step("a pattern fixed")
    driver_entry(doc, GLOBEX)["repo"] = driver_entry(good, GLOBEX)["repo"]
    step("a repo")
    doc["releases"].append({**release_entry(good, "Gazpacho"), "start": "2025-Dec-01"})
    for d, g in zip(doc["drivers"], good["drivers"], strict=True):
        d["releases"] = g.get("releases", [])
    step("a release added")
    release_entry(doc, "Flamingo")["series"] = "2025.2"
    step("a series fixed")
    release_entry(doc, "Gazpacho")["start"] = release_entry(good, "Gazpacho")["start"]
    step("a start date fixed")
    release_entry(doc, "Epoxy")["active"] = True
    step("a release made active")
    assert doc == good
    doc["drivers"].remove(driver_entry(doc, UMBRELLA))
    step("a driver removed")
    return steps


def test_each_kind_of_registry_change_reaches_the_past(ssh_env: SSHEnv, tmp_path: Path) -> None:
    """The daemon starts on a registry broken in every way a binding's meaning can be, and DriverLog's maintainers
    fix it one change at a time, by SIGHUP: after each, the marks are DriverLog's over the whole history under the
    registry in force; an unchanged binding costs no query; the first import's transitions are history (no
    webhook), a change's are delivered, with their cause; a removed driver leaves the marks, its rows stay."""
    import json

    from driverlog_daemon.config import WebhookConfig
    from driverlog_daemon.testing.receiver import Receiver

    steps = registries()
    path = tmp_path / "registry.json"
    written = [load_registry(_write(path.with_name(f"r{i}.json"), doc)) for i, (_, doc) in enumerate(steps)]
    events = seed(ssh_env, written[-2], changes=700, ci_rate=0.25, seed=3)
    path.write_text(json.dumps(steps[0][1]))
    (tmp_path / "secret").write_text("s3cret")
    receiver = Receiver(b"s3cret")
    hook = WebhookConfig(name="test", url=receiver.url, secret_file=str(tmp_path / "secret"), timeout_seconds=2,
                         backoff_base_seconds=0.05, backoff_max_seconds=0.2)
    try:
        with Harness(ssh_env, tmp_path, registry=path, webhooks=(hook,)) as h:
            assert wait_until(h.settled, timeout=60)
            check_marks(h.db, written[0], events)
            assert query(h.db, "SELECT count(*) FROM webhook_outbox")[0][0] == 0  # the first import is history
            for i, (what, doc) in enumerate(steps[1:], start=1):
                assert expected(written[i], events) != expected(written[i - 1], events), what  # it changes marks
                before = len(ssh_env.server.commands)
                outbox = query(h.db, "SELECT count(*) FROM webhook_outbox")[0][0]
                path.write_text(json.dumps(doc))
                reloaded = h.service.reload()
                assert reloaded is not None and reloaded.result(timeout=30) is not None, what
                assert wait_until(h.settled, timeout=60), what
                check_marks(h.db, written[i], events)
                asked = [c for c in ssh_env.server.commands[before:] if "commentby:" in c or "project:" in c]
                changed = {c.key for c in _changes(written[i - 1], written[i])}
                accounts = {d.ci.account for d in written[i].drivers if d.key in changed and d.ci is not None}
                for command in asked:  # an unchanged binding costs nothing: only the changed accounts are asked for
                    named = set(_accounts_named(command))
                    assert named <= accounts, (what, command)
                assert len(asked) < poll_cost(written[i]), what
                transitions = query(h.db, "SELECT count(*) FROM mark_transitions WHERE cause = 'registry'")[0][0]
                if query(h.db, "SELECT count(*) FROM webhook_outbox")[0][0] > outbox:
                    assert transitions, what
            assert wait_until(lambda: len(receiver.received) >= query(
                h.db, "SELECT count(*) FROM webhook_outbox")[0][0], timeout=20)
            causes = {r.body["transition"]["cause"] for r in receiver.received}
            assert causes == {"registry"}, causes  # a change's transitions are news, with their cause
            umbrella = query(h.db, "SELECT id, removed_at FROM drivers WHERE name = ?", UMBRELLA)[0]
            assert umbrella[1] is not None  # no longer registered, its rows still in the file
            assert query(h.db, "SELECT count(*) FROM verifications WHERE driver_id = ?", umbrella[0])[0][0] > 0
            # … but it has left the metrics, the feed and the health rows
            gauge = "driverlog_driver_last_verification_timestamp_seconds"
            series = {s.labels["driver"] for m in h.service.metrics.registry.collect() if m.name == gauge
                      for s in m.samples}
            assert UMBRELLA not in series and INITECH in series
            with h.service.reader.snapshot() as conn:
                assert all(e["driver"]["name"] != UMBRELLA for e in reads_health.recent_transitions(conn, limit=500))
                names = {key[2] for key, _ in reads_health.registered_ci_health(conn, time.time(), 14)}
            assert UMBRELLA not in names and INITECH in names
    finally:
        receiver.close()


def expected(registry: Registry, events: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], Any]:
    ids = {r.id for r in registry.releases if r.active}
    return {k: same(v) for k, v in driverlog_marks(events, registry).items() if k[3] in ids}


def _hook(tmp_path: Path) -> Any:
    """A webhook whose receiver is never reached (its deliveries stay queued: what was queued is what was news)."""
    from driverlog_daemon.config import WebhookConfig

    (tmp_path / "secret").write_text("s3cret")
    return WebhookConfig(name="test", url="http://127.0.0.1:9/hooks", secret_file=str(tmp_path / "secret"),
                         timeout_seconds=1, backoff_base_seconds=3600, backoff_max_seconds=3600)


def _write(path: Path, doc: dict[str, Any]) -> Path:
    import json

    path.write_text(json.dumps(doc))
    return path


def _changes(old: Registry, new: Registry) -> Any:
    from driverlog_daemon.registry.changes import compare

    return compare(old, new).bindings


def _accounts_named(command: str) -> list[str]:
    import re

    return re.findall(r"commentby:([^\s()']+)", command)


# ------------------------------------------------------------------------------------------- the stop rule

def _one_driver_registry(path: Path) -> Path:
    """One driver, one active release that started long ago: the search has one pair to find."""
    import json

    doc = json.loads(DATA.read_text())
    doc["releases"] = [{"id": "Antelope", "wiki": "w", "start": "2022-Sep-21", "active": True}]
    doc["drivers"] = [{**d, "releases": ["Antelope"]} for d in doc["drivers"]
                      if d["name"] == "Acme Volume Driver (FC)"]
    return _write(path, doc)


def _ci(number: int, t: int, result: str) -> dict[str, Any]:
    from driverlog_daemon.testing.events import comment_event

    return comment_event(number=number, patch_set=1, created_on=t, status="NEW", comment=(
        f"Patch Set 1: Verified{'+1' if result == 'SUCCESS' else '-1'}\n\n"
        f"- acme-cinder-fc https://ci/{number} : {result} in 1h"))


def _merged(number: int, t: int, ps: int = 1) -> dict[str, Any]:
    return {"submitter": {"name": "Core", "username": "core"}, "patchSet": {"number": ps, "revision": "ab" * 20},
            "change": {"project": "openstack/cinder", "branch": "master", "id": "I" + "2" * 40, "number": number,
                       "url": f"https://review.example.org/c/openstack/cinder/+/{number}", "status": "MERGED"},
            "project": "openstack/cinder", "refName": "refs/heads/master", "type": "change-merged",
            "eventCreatedOn": t}


def test_the_search_stops_at_the_first_mark_nothing_further_back_can_beat(ssh_env: SSHEnv, tmp_path: Path) -> None:
    """Newest updated first, a change updated late may hold an old result: the mark it gives is not final until the
    rows left are older than it. Two changes a page: change 1 (a success 300 days ago, merged 120 days ago) comes
    first, with change 10, merged at a later patch set than its CI judged (no candidate); then change 2 (a failure
    150 days ago, merged the next day), which is the mark; change 3 (merged 290 days ago) is read to prove it, and
    changes 4 to 9, older still, are never asked for."""
    day, now = 86400, int(time.time())
    events = [_ci(1, now - 300 * day, "SUCCESS"), _merged(1, now - 120 * day),
              _ci(10, now - 140 * day, "SUCCESS"), _merged(10, now - 130 * day, ps=2),
              _ci(2, now - 150 * day, "FAILURE"), _merged(2, now - 149 * day),
              _ci(3, now - 291 * day, "SUCCESS"), _merged(3, now - 290 * day)]
    for n in range(4, 10):
        events += [_ci(n, now - (300 + 10 * n) * day, "SUCCESS"), _merged(n, now - (299 + 10 * n) * day)]
    ssh_env.server.index.query_limit = 2  # two changes a page: the rule decides after each page
    for event in events:
        ssh_env.server.record_only(event)
    with Harness(ssh_env, tmp_path, registry=_one_driver_registry(tmp_path / "one.json")) as h:
        assert wait_until(h.settled, timeout=30)
        assert query(h.db, "SELECT change_number, result FROM driver_marks") == [(2, "failure")]
        searched = [c for c in ssh_env.server.commands if "status:merged commentby:" in c and "before:" in c]
        read = {n for n in range(1, 11) if query(h.db, "SELECT 1 FROM ci_comments WHERE change_number = ?", n)}
    assert read == {1, 10, 2, 3}, read  # 4-9 were never read: the search stopped early
    assert len(searched) == 3, "\n".join(searched)  # [1, 10], [10, 2], [2, 3]


# ---------------------------------------------------------------------------------------- kill -9 mid-import

def _rows(db: Path) -> tuple[list[tuple[Any, ...]], int, list[tuple[Any, ...]]]:
    """What an import leaves: every verification by its natural key with its verdict, the kept comments, the marks."""
    verifications = query(db, """SELECT d.name, v.change_number, v.patch_set, v.ci_account, v.comment_sha256,
                                        v.result, v.release FROM verifications v JOIN drivers d ON d.id = v.driver_id
                                 ORDER BY 1, 2, 3, 4, 5""")
    marks_ = query(db, """SELECT d.name, m.release, m.change_number, m.patch_set, m.result FROM driver_marks m
                          JOIN drivers d ON d.id = m.driver_id ORDER BY 1, 2""")
    return verifications, query(db, "SELECT count(*) FROM ci_comments")[0][0], marks_


def test_kill_9_during_the_import_resumes_where_it_stopped_and_doubles_nothing(ssh_env: SSHEnv,
                                                                                tmp_path: Path) -> None:
    """The real daemon is killed while a query of its mark search is on the wire; restarted, it resumes the same
    import from its last committed step (it does not start over) and ends with exactly the rows of a run that
    was never interrupted: the same verifications, once each, the same kept comments and marks."""
    import re
    import signal
    import subprocess
    import sys

    from driverlog_daemon.testing.gerrit import daemon_config

    search = re.compile(r"status:merged .*commentby:.*before:")
    searches = lambda: sum(1 for c in ssh_env.server.commands if search.search(c))  # noqa: E731
    registry = load_registry(DATA)
    seed(ssh_env, registry)
    (tmp_path / "whole").mkdir()
    with Harness(ssh_env, tmp_path / "whole", registry=DATA) as h:
        assert wait_until(h.settled, timeout=60)
        whole = _rows(h.db)
    whole_searches = searches()
    assert whole[2] and len(whole[0]) > 100 and whole_searches > 5

    work = tmp_path / "killed"
    work.mkdir()
    (work / "id_ecdsa").write_bytes(ssh_env.client_key_file.read_bytes())
    (work / "known_hosts").write_bytes(ssh_env.known_hosts.read_bytes())
    db = work / "d.sqlite"
    config = daemon_config(work, ssh_env.server, username="driverlog", registry=DATA, database=db, http_port=0)
    log = (work / "daemon.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "driverlog_daemon", "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT)

    # the fourth page of the mark search hangs on the wire: the daemon dies there, mid-import
    ssh_env.server.hold_queries(True, after=3, matching=search.pattern)
    daemon = start()
    try:
        assert wait_until(lambda: ssh_env.server.queries_waiting >= 1, timeout=30)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        ssh_env.server.hold_queries(False)
        assert query(db, "SELECT finished_at FROM imports") == [(None,)]
        assert query(db, "SELECT count(*) FROM import_work WHERE phase = 'done'")[0][0] > 0
        asked = searches()
        daemon = start()
        assert wait_until(lambda: query(db, "SELECT finished_at FROM imports")[0][0] is not None, timeout=60)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
        log.close()
    assert query(db, "SELECT count(*) FROM imports") == [(1,)]  # resumed, not planned again
    # it went on from where it was: the three pages committed are not asked for again (the held one is)
    assert searches() - asked == whole_searches - 3, (whole_searches, asked, searches())
    killed = _rows(db)
    assert killed == whole  # the same rows, none doubled (the natural keys are unique: equal lists, equal counts)


# ------------------------------------------------------------------------------------------ while it runs

def test_while_the_import_runs_it_shows_and_the_stream_and_gaps_go_on(ssh_env: SSHEnv, tmp_path: Path,
                                                                      registry: Registry) -> None:
    """The mark search held on the wire: the import shows in the header text, /healthz's detail, the gauges and
    the ledger; meanwhile a live result is recorded and its mark's transition delivered (news, though the import
    is history), and an outage's gap is backfilled and closed. Released, the import ends."""
    from driverlog_daemon.config import WebhookConfig
    from driverlog_daemon.testing.events import ci_event
    from driverlog_daemon.testing.receiver import Receiver

    seed(ssh_env, registry)
    ssh_env.server.hold_queries(True, after=2, matching=r"status:merged .*commentby:.*before:")
    (tmp_path / "secret").write_text("s3cret")
    receiver = Receiver(b"s3cret")
    hook = WebhookConfig(name="test", url=receiver.url, secret_file=str(tmp_path / "secret"), timeout_seconds=2,
                         backoff_base_seconds=0.05, backoff_max_seconds=0.2)
    try:
        with Harness(ssh_env, tmp_path, webhooks=(hook,)) as h:
            assert wait_until(lambda: ssh_env.server.queries_waiting >= 1, timeout=30)
            progress = h.service.history()
            assert progress.imports == 1 and 0 <= progress.done < progress.total == registry.ci_bindings
            assert h.service.live().importing == f"importing history: {progress.done} of {progress.total} bindings"
            ok, detail = h.service.process_health()
            assert ok and detail["history"] == {"importing": True, "bindings": progress.total,
                                                "bindings_done": progress.done}
            assert h.metric("driverlog_history_import_bindings") == progress.total
            assert "importing history" in h.service.status_line()
            with h.service.reader.snapshot() as conn:
                ledger = reads.ingestion(conn)
            assert ledger["totals"]["imports"] == 1
            # live: a new change is judged and merged while the import waits; its first mark is news
            now = int(time.time())
            for number, result in ((990001, "FAILURE"), (990004, "SUCCESS")):  # one of them flips the mark
                ssh_env.server.push_event(ci_event(number, now, result, status="NEW"))
                ssh_env.server.push_event(_merged(number, now + 1, ps=2))
                now += 2
            live = {990001, 990004}
            assert wait_until(lambda: any(r.body["transition"]["change_number"] in live for r in receiver.received),
                              timeout=20)
            news = [r.body["transition"] for r in receiver.received if r.body["transition"]["change_number"] in live]
            assert {t["cause"] for t in news} == {"merge"}
            # an outage: the reconnect's gap is backfilled while the import still waits on the wire
            h.outage(990002, [990003])
            assert wait_until(lambda: h.open_gaps() == 0, timeout=20)
            assert h.service.history().imports == 1  # still under way
            ssh_env.server.hold_queries(False)
            assert wait_until(h.settled, timeout=60)
            assert h.service.history().imports == 0 and h.service.live().importing is None
            assert h.metric("driverlog_history_import_bindings") == 0
    finally:
        receiver.close()


def test_without_a_gerrit_server_a_registry_change_judges_again_and_asks_nothing(tmp_path: Path) -> None:
    """A daemon that serves what the file holds ([gerrit] host empty) still applies a registry change to it, found
    at its start against the registry the file last applied: the changed driver is judged again from the kept
    comments, and no query is planned that could never run."""
    import json

    from driverlog_daemon.config import Config, DatabaseConfig, RegistryConfig
    from driverlog_daemon.daemon.service import Service
    from driverlog_daemon.source import replay
    from driverlog_daemon.store.pipeline import Pipeline
    from driverlog_daemon.store.store import Store
    from driverlog_daemon.testing.events import ci_event, line

    db, path = tmp_path / "d.sqlite", tmp_path / "registry.json"
    doc = json.loads(DATA.read_text())
    fc = next(d for d in doc["drivers"] if d["name"] == "Acme Volume Driver (FC)")
    good, fc["ci"]["success_pattern"] = fc["ci"]["success_pattern"], "never"
    path.write_text(json.dumps(doc))
    config = Config(registry=RegistryConfig(str(path)), database=DatabaseConfig(str(db)))
    service = Service(config, http=False)  # applies the broken registry: the file's record of it
    service.start()
    assert service.stop()
    stream = tmp_path / "stream.jsonl"
    stream.write_bytes(line(ci_event(4242, int(time.time()) - 60)))
    with Store(db) as store:  # the comment arrives (as a replay brings it): no verdict under that registry
        replay.replay(Pipeline(load_registry(path), store), str(stream), jobs=1)
    assert query(db, "SELECT count(*) FROM verifications") == [(0,)]
    assert query(db, "SELECT count(*) FROM ci_comments") == [(1,)]
    fc["ci"]["success_pattern"] = good
    path.write_text(json.dumps(doc))
    service = Service(config, http=False)
    service.start()
    try:
        assert wait_until(lambda: query(db, "SELECT count(*) FROM imports WHERE finished_at IS NOT NULL")[0][0] == 1,
                          timeout=20)
        assert query(db, "SELECT DISTINCT kind FROM import_work") == [("rejudge",)]
        assert query(db, "SELECT d.name, v.result FROM verifications v JOIN drivers d ON d.id = v.driver_id") == [
            ("Acme Volume Driver (FC)", "success")]
    finally:
        service.stop()


def test_stop_waits_for_the_step_on_the_wire_and_says_when_it_is_still_there(tmp_path: Path,
                                                                           registry: Registry) -> None:
    """The daemon closes its read connections only once the importer has stopped reading on them (closing one
    under a thread mid-query crashed the process): ``stop`` waits for the step running and says whether it
    ended. The step is held where a query would hang on the wire (the executor), a fault no server gives on cue."""
    import threading

    from driverlog_daemon.source.history import Importer
    from driverlog_daemon.store.reads import Reader
    from driverlog_daemon.store.store import Store

    Store(tmp_path / "d.sqlite").close()
    reader = Reader(tmp_path / "d.sqlite")
    on_the_wire, answer = threading.Event(), threading.Event()

    def executor() -> None:
        on_the_wire.set()
        answer.wait(30)

    importer = Importer(reader, lambda: registry, writer=None, executor=executor)  # type: ignore[arg-type]
    importer.start()
    try:
        assert on_the_wire.wait(10)
        assert importer.stop(0.2) is False  # still in its step: its connection must stay open
        answer.set()
        assert importer.stop(10) is True
    finally:
        answer.set()
        reader.close()
