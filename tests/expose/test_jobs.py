"""A driver's jobs (``/api/1.0/drivers/<id>/jobs``, its page) on a real file built by replay, over real HTTP: every
CI driver × job's runs, passes and flaky counts equal a direct count from the events; the page's jobs table
escapes what Gerrit sent and never links a ``javascript:`` URL; ``days`` is one of 7, 30, 90."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.expose.runtime import Live
from driverlog_daemon.expose.web.app import App
from driverlog_daemon.metrics import Metrics
from driverlog_daemon.registry.load import Registry, load_registry
from driverlog_daemon.source import replay
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.store import Store
from driverlog_daemon.testing import DATA, wait_until
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import comment_event, line
from driverlog_daemon.testing.history import history
from driverlog_daemon.testing.http import ThreadedServer
from driverlog_daemon.testing.net import http_get

NOW = int(time.time())
HOSTILE = "- <script>alert(1)</script> javascript:alert(1) : FAILURE in 1m"
WORDS = ("SUCCESS", "FAILURE", "POST_FAILURE", "TIMED_OUT", "RETRY_LIMIT", "NODE_FAILURE", "SKIPPED", "ABORTED")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Registry, list[dict[str, Any]], Path]]:
    registry = load_registry(DATA)
    events = history(registry, days=60, changes=250, end=NOW - 3600, seed=9, ci_rate=0.7, flips=1.0)
    events.append(comment_event("acme-storage-ci", f"Patch Set 1: Verified-1\n\nBuild failed.\n\n{HOSTILE}",
                                number=990001, patch_set=1, created_on=NOW - 600))
    (tmp_path / "s.jsonl").write_bytes(b"".join(line(e) for e in events))
    db = tmp_path / "d.sqlite"
    with Store(db) as store:
        replay.replay(Pipeline(registry, store), str(tmp_path / "s.jsonl"), jobs=1)
    app = App(db, lambda: registry, Metrics(), lambda: (True, {}), live=lambda: Live("connected"), max_staleness=0)
    web = ThreadedServer(app, "127.0.0.1", 0)
    web.start()
    yield web.port, registry, events, db
    web.stop()


def _direct(events: list[dict[str, Any]], account: str, project: str, since: int) -> dict[str, dict[str, int]]:
    """Per job: runs, passes and flaky patch sets, counted from the events' comments with a reader of its own."""
    outcomes: dict[str, dict[tuple[int, int], list[str]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        if e["type"] != "comment-added" or e["author"].get("username") != account or e["project"] != project \
                or e["eventCreatedOn"] < since:
            continue
        for job, result in _first_jobs(e["comment"]).items():
            outcomes[job][(int(e["change"]["number"]), int(e["patchSet"]["number"]))].append(result)
    out = {}
    for job, pairs in outcomes.items():
        ran = [r for rs in pairs.values() for r in rs if r != "SKIPPED"]
        out[job] = {"runs": len(ran), "passes": ran.count("SUCCESS"),
                    "flaky": sum(1 for rs in pairs.values() if "SUCCESS" in rs
                                 and any(r not in ("SUCCESS", "SKIPPED") for r in rs))}
    return out


def test_every_driver_and_job_equals_a_direct_count(served: tuple[int, Registry, list[dict[str, Any]], Path]) -> None:
    port, registry, events, db = served
    ids = dict(query(db, "SELECT name, id FROM drivers"))
    compared = flaky = 0
    for d in registry.drivers:
        if d.ci is None:
            continue
        status, _, body = http_get(port, f"/api/1.0/drivers/{ids[d.name]}/jobs?days=90")
        assert status == 200
        got = {j["name"]: {k: j[k] for k in ("runs", "passes", "flaky")} for j in json.loads(body)["jobs"]}
        assert got == _direct(events, d.ci.account, d.review_project, NOW - 90 * 86400), d.name
        compared += len(got)
        flaky += sum(j["flaky"] for j in got.values())
    assert compared > 50 and flaky > 0  # the corpus has jobs, and rechecks that flip
    before = http_get(port, f"/api/1.0/drivers/{ids['Acme Volume Driver (FC)']}/jobs?days=90")[2]
    with Store(db) as store:  # the same comments again (a replay over a live file, a backfill): nothing doubles
        replay.replay(Pipeline(registry, store), str(db.parent / "s.jsonl"), jobs=1)
    assert http_get(port, f"/api/1.0/drivers/{ids['Acme Volume Driver (FC)']}/jobs?days=90")[2] == before


def test_the_page_shows_the_jobs_escaped_and_days_is_checked(
        served: tuple[int, Registry, list[dict[str, Any]], Path]) -> None:
    port, _, _, db = served
    fc = dict(query(db, "SELECT name, id FROM drivers"))["Acme Volume Driver (FC)"]
    _, _, page = http_get(port, f"/drivers/{fc}")
    text = page.decode()
    assert "<h2 id=\"jobs\">Jobs" in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>" not in text
    assert 'href="javascript:' not in text
    body = json.loads(http_get(port, f"/api/1.0/drivers/{fc}/jobs")[2])
    assert body["days"] == 30 and body["driver"]["verdicts"] > 0
    hostile = next(j for j in body["jobs"] if j["name"] == "<script>alert(1)</script>")
    assert hostile["last_failure"]["log_url"] is None  # javascript: is never a link
    assert http_get(port, f"/api/1.0/drivers/{fc}/jobs?days=5")[0] == 400
    assert http_get(port, "/api/1.0/drivers/99999/jobs")[0] == 404


def test_the_csv_export_and_health_jobs(served: tuple[int, Registry, list[dict[str, Any]], Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import csv
    import io

    from driverlog_daemon.cli import main

    port, registry, events, db = served
    assert main(["export", "jobs", "--database", str(db)]) == 0
    exported = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(exported)))
    wanted = 0
    for d in registry.drivers:
        if d.ci is not None:
            direct = _direct(events, d.ci.account, d.review_project, 0)
            wanted += sum(1 for e in events if e["type"] == "comment-added"
                          and e["author"].get("username") == d.ci.account and e["project"] == d.review_project
                          for _ in _first_jobs(e["comment"]))
            assert {r["job"] for r in rows if r["driver"] == d.name} == set(direct), d.name
    assert len(rows) == wanted
    hostile = next(r for r in rows if r["job"].startswith("<script>"))
    assert hostile["log_url"] == "javascript:alert(1)" and hostile["result"] == "FAILURE"  # data, not a link
    status, _, body = http_get(port, "/export/jobs.csv")
    assert status == 200 and body.decode() == exported
    assert main(["health", "--jobs", "--database", str(db)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["vendor", "driver", "job", "runs"] and len(table) > 20


def _first_jobs(comment: str) -> dict[str, str]:
    """Job name -> its first line's result, read by a reader of the test's own."""
    first: dict[str, str] = {}
    for text in comment.split("\n"):
        m = re.match(r"\s*- (\S+)( \S+)? : ([A-Z_]+)\b", text)
        if m and m.group(3) in WORDS:
            first.setdefault(m.group(1), m.group(3))
    return first


def test_the_per_driver_job_metrics(served: tuple[int, Registry, list[dict[str, Any]], Path]) -> None:
    from driverlog_daemon.store import reads_jobs, schema

    port, registry, _, db = served
    ids = dict(query(db, "SELECT name, id FROM drivers"))
    flakiest, jobs = max(((d, json.loads(http_get(port, f"/api/1.0/drivers/{ids[d.name]}/jobs")[2])["jobs"])
                          for d in registry.drivers if d.ci is not None), key=lambda x: sum(j["flaky"] for j in x[1]))
    metrics = Metrics()
    reads = []

    def read() -> list[tuple[str, str, str, int, float | None]]:
        conn = schema.connect(db, readonly=True)
        try:
            reads.append(1)
            return reads_jobs.flake_gauges(conn, time.time())
        finally:
            conn.close()

    labels = {"project": flakiest.project_id, "vendor": flakiest.vendor, "driver": flakiest.name}
    metrics.watch_jobs(read)
    metrics.exposition()  # the first scrape starts the read, and does not wait for it
    assert wait_until(lambda: metrics.registry.get_sample_value("driverlog_driver_flaky_jobs_30d", labels) is not None)
    flaky = metrics.registry.get_sample_value("driverlog_driver_flaky_jobs_30d", labels)
    assert flaky == sum(1 for j in jobs if j["flaky"]) and flaky > 0
    share = metrics.registry.get_sample_value("driverlog_driver_failures_on_flaky_ratio_30d", labels)
    assert share is not None and 0 < share < 1
    metrics.exposition()
    assert len(reads) == 1  # read again only after the interval
