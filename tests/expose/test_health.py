"""CI health by its definitions (docs/health.md): pass rates, coverage, silence, each mark's history — against
direct implementations, in random histories; and the API's answers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driverlog_daemon import cli
from driverlog_daemon.model import BackfillRun, Verification
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import reads_health, schema
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.db import released_file, write_merged_history
from driverlog_daemon.testing.site import NOW, Site, driver, merged, vote

DAY = 86400
FC, ISCSI = "Acme Volume Driver (FC)", "Acme Volume Driver (iSCSI)"


def ci_vote(registry: Registry, name: str, change: int, ps: int, t: int, result: str, release: str = "Gazpacho",
            sha: str = "a") -> Verification:
    return vote(registry, name, change, ps, t, result, release, sha=sha)


# ------------------------------------------------------------------------------------ numbers vs definitions

runs_strategy = st.lists(st.tuples(st.sampled_from([FC, ISCSI]), st.integers(1, 40), st.integers(1, 2),
                                   st.integers(-100 * DAY, 0), st.sampled_from(["success", "failure"]),
                                   st.sampled_from("abc")), max_size=40)
merges_strategy = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 2), st.integers(-40 * DAY, 0)),
                           max_size=15)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(runs_strategy, merges_strategy, st.integers(0, DAY - 1))
def test_health_numbers_equal_the_definitions(tmp_path_factory: pytest.TempPathFactory, registry: Registry,
                                              runs: list[tuple[Any, ...]], merges: list[tuple[int, int, int]],
                                              second: int) -> None:
    now = 1_790_000_000 - 1_790_000_000 % DAY + second  # any second of a day: windows cut days anywhere
    with Store(tmp_path_factory.mktemp("h") / "d.sqlite") as store:
        store.sync_drivers(registry)
        vs = {}
        for name, change, ps, dt, result, sha in runs:
            v = ci_vote(registry, name, change, ps, now + dt, result, sha=sha)
            vs.setdefault((v.driver_key, change, ps, sha), v)  # one row per natural key
        merged_at: dict[int, tuple[int, int]] = {}
        for change, ps, dt in merges:
            merged_at.setdefault(change, (ps, now + dt))
        store.commit(Batch("replay", list(vs.values()),
                           changes=[merged(c, ps, t) for c, (ps, t) in merged_at.items()]))
        ids = dict(store.conn.execute("SELECT name, id FROM drivers").fetchall())
        got = reads_health.ci_health_of_drivers(store.conn, now, 14)
    for name in (FC, ISCSI):
        mine = [v for v in vs.values() if v.driver_key[2] == name]
        h = got[ids[name]]
        for days in (7, 30, 90):
            window = [v for v in mine if now - days * DAY <= v.comment_time <= now]
            wins = sum(v.result == "success" for v in window)
            assert h["runs"][str(days)] == len(window)
            assert h["pass_rate"][str(days)] == (None if not window else round(wins / len(window), 4))
        in_window = {c: ps for c, (ps, t) in merged_at.items() if now - 30 * DAY <= t <= now}
        covered = {c for c, ps in in_window.items() if any(v.change_number == c and v.patch_set == ps for v in mine)}
        assert h["coverage"] == {"days": 30, "merged": len(in_window), "covered": len(covered),
                                 "ratio": None if not in_window else round(len(covered) / len(in_window), 4)}
        successes = [v.comment_time for v in mine if v.result == "success"]
        assert h["last_success"] == (max(successes) if successes else None)
        assert h["at_risk"] is None  # no backfill ever proved the file complete


# ------------------------------------------------------------------------------------------ each definition


def store_with(tmp: Path, registry: Registry) -> Store:
    s = Store(tmp / "d.sqlite")
    s.sync_drivers(registry)
    return s


def history(store: Store) -> list[tuple[Any, ...]]:
    return store.conn.execute("SELECT release, from_result, to_result, at, change_number, patch_set "
                              "FROM mark_transitions ORDER BY at, id").fetchall()


def test_a_change_merged_after_its_comment_makes_the_mark_at_the_merge(tmp_path: Path, registry: Registry) -> None:
    with store_with(tmp_path, registry) as s:
        s.commit(Batch("stream", [ci_vote(registry, FC, 1, 2, NOW - 500, "success")]))
        assert history(s) == []  # not merged: no mark
        s.commit(Batch("stream", [], changes=[merged(1, 2, NOW - 100)]))
        assert history(s) == [("Gazpacho", None, "success", NOW - 100, 1, 2)]


def test_ties_are_decided_by_change_patch_set_and_comment_as_marks(tmp_path: Path, registry: Registry) -> None:
    with store_with(tmp_path, registry) as s:
        s.commit(Batch("stream", [ci_vote(registry, FC, 2, 1, NOW - 50, "failure", sha="b"),
                        ci_vote(registry, FC, 1, 1, NOW - 50, "success", sha="c")],
                       changes=[merged(1, 1, NOW - 60), merged(2, 1, NOW - 60)]))
        # equal comment times and effective times: change 2 ranks higher, so the one transition is to failure
        assert history(s) == [("Gazpacho", None, "failure", NOW - 50, 2, 1)]
        mark = s.conn.execute("SELECT result, change_number FROM driver_marks").fetchone()
        assert mark == ("failure", 2)  # today's mark is the history's last word


def test_a_late_backfill_moves_a_transition_and_removes_one(tmp_path: Path, registry: Registry) -> None:
    with store_with(tmp_path, registry) as s:
        s.commit(Batch("stream", [ci_vote(registry, FC, 1, 1, NOW - 900, "success"),
                        ci_vote(registry, FC, 2, 1, NOW - 500, "failure")],
                       changes=[merged(1, 1, NOW - 800), merged(2, 1, NOW - 400)]))
        first = s.conn.execute("SELECT id FROM mark_transitions ORDER BY at").fetchall()
        assert history(s) == [("Gazpacho", None, "success", NOW - 800, 1, 1),
                              ("Gazpacho", "success", "failure", NOW - 400, 2, 1)]
        # a backfill learns an older merge time of change 1, and a success on change 3, commented before change 2's
        s.commit(Batch("backfill", [ci_vote(registry, FC, 3, 1, NOW - 600, "success")],
                       changes=[merged(1, 1, NOW - 850), merged(3, 1, NOW - 300)]))
        assert history(s) == [("Gazpacho", None, "success", NOW - 850, 1, 1),
                              ("Gazpacho", "success", "failure", NOW - 400, 2, 1)]  # change 3's is the older
        assert s.conn.execute("SELECT id FROM mark_transitions ORDER BY at").fetchall()[1] == first[1]
        s.commit(Batch("backfill", [ci_vote(registry, FC, 4, 1, NOW - 350, "success")],
                       changes=[merged(4, 1, NOW - 320)]))
        assert history(s)[-1] == ("Gazpacho", "failure", "success", NOW - 320, 4, 1)


def test_at_risk_is_unknown_until_the_file_is_proven_that_far_back(tmp_path: Path, registry: Registry) -> None:
    server = "gerrit:29418"
    with store_with(tmp_path, registry) as s:
        s.commit(Batch("replay", [ci_vote(registry, FC, 1, 1, NOW - 20 * DAY, "success")]))
        fc = s.conn.execute("SELECT id FROM drivers WHERE name = ?", (FC,)).fetchone()[0]
        assert reads_health.ci_health_of_drivers(s.conn, NOW, 14)[fc]["at_risk"] is None  # replay proves nothing
        gap = s.open_gap(server, NOW - 7 * DAY, "start")
        run = BackfillRun("start", NOW - 7 * DAY, NOW, 1, 1, 0, 0, 0, 0.0)
        s.commit(Batch("backfill", [], close_gaps=(server, gap, None), backfill=(server, run)))
        assert reads_health.horizon(s.conn) == NOW - 7 * DAY
        assert reads_health.ci_health_of_drivers(s.conn, NOW, 14)[fc]["at_risk"] is None  # 7 days known, 14 asked
        assert reads_health.ci_health_of_drivers(s.conn, NOW, 5)[fc]["at_risk"] is True  # 5 days known: none in them
        s.commit(Batch("stream", [ci_vote(registry, FC, 2, 1, NOW - DAY, "success")]))
        assert reads_health.ci_health_of_drivers(s.conn, NOW, 5)[fc]["at_risk"] is False
        gap = s.open_gap(server, NOW - 30 * DAY, "reconnect")  # a gap older than a backfill may reach
        s.commit(Batch("backfill", [], close_gaps=(server, gap, None),
                       backfill=(server, run._replace(since=NOW - 2 * DAY, capped=True))))
        assert reads_health.horizon(s.conn) == NOW - 2 * DAY  # what is older than the capped window is not known


def test_a_version_3_file_gets_its_history(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "v3.sqlite"
    conn = released_file(path, 3)  # with its per-row mark triggers
    write_merged_history(conn, driver(registry, FC), [(1, NOW - 900, "success", NOW - 800),
                                                       (2, NOW - 500, "failure", NOW - 400)])
    assert conn.execute("SELECT result FROM driver_marks").fetchall() == [("failure",)]
    conn.close()
    with Store(path) as s:
        assert schema.schema_version(s.conn) == schema.SCHEMA_VERSION
        assert history(s) == [("Gazpacho", None, "success", NOW - 800, 1, 1),
                              ("Gazpacho", "success", "failure", NOW - 400, 2, 1)]
        assert s.conn.execute("SELECT sum(runs) FROM driver_days").fetchone()[0] == 2
        assert s.conn.execute("SELECT result, change_number FROM driver_marks").fetchall() == [("failure", 2)]
        s.commit(Batch("stream", [ci_vote(registry, FC, 3, 1, NOW - 100, "success")], changes=[merged(3, 1, NOW - 50)]))
        assert s.conn.execute("SELECT result, change_number FROM driver_marks").fetchall() == [("success", 3)]


def test_the_health_command_reads_the_file_as_the_api_does(tmp_path: Path, registry: Registry,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    server = "gerrit:29418"
    with store_with(tmp_path, registry) as s:
        s.commit(Batch("replay", [ci_vote(registry, FC, 1, 1, NOW - 20 * DAY, "success"),
                        ci_vote(registry, FC, 2, 1, NOW - DAY, "failure"),
                        ci_vote(registry, ISCSI, 3, 1, NOW - DAY, "success")], changes=[merged(2, 1, NOW - DAY)]))
        gap = s.open_gap(server, NOW - 30 * DAY, "start")
        s.commit(Batch("backfill", [], close_gaps=(server, gap, None),
                       backfill=(server, BackfillRun("start", NOW - 30 * DAY, NOW, 1, 1, 0, 0, 0, 0.0))))
        expected = reads_health.ci_health_of_drivers(s.conn, time.time(), 14)
        ids = dict(s.conn.execute("SELECT name, id FROM drivers").fetchall())
    config = tmp_path / "driverlog.toml"
    config.write_text(f'[registry]\npath = "{DATA}"\n[database]\npath = "{tmp_path / "d.sqlite"}"\n')
    assert cli.main(["health", "--config", str(config), "--json"]) == 0
    rows = {r["driver"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[FC]["ci_account"] and "@" not in json.dumps(rows)  # no e-mail addresses
    assert rows[FC]["health"]["runs"]["30"] == 2 and rows[FC]["health"]["at_risk"] is True  # 20 days silent
    assert rows[ISCSI]["health"]["at_risk"] is False
    assert rows[FC]["health"] == expected[ids[FC]] and rows[ISCSI]["health"] == expected[ids[ISCSI]]
    assert set(rows) == {name for name, i in ids.items() if i in expected}  # every CI driver, none without one
    assert cli.main(["health", "--config", str(config), "--at-risk"]) == 0
    table = capsys.readouterr().out
    assert FC in table and ISCSI not in table and "at risk" in table.splitlines()[0]


# ------------------------------------------------------------------------------------------------ the API


def test_every_record_has_health_and_history_and_missed_answer(site: Site) -> None:
    drivers = site.json("/api/1.0/drivers")["drivers"]
    fc = next(d for d in drivers if d["name"] == FC)
    assert set(fc["health"]) == {"runs", "pass_rate", "coverage", "last_success", "at_risk", "unjudged"}
    assert fc["health"]["runs"] == {"7": 2, "30": 2, "90": 2} and fc["health"]["pass_rate"]["7"] == 0.5
    assert fc["health"]["coverage"] == {"days": 30, "merged": 1, "covered": 1, "ratio": 1.0}
    assert fc["health"]["at_risk"] is None and fc["health"]["last_success"] == NOW - 3600
    no_ci = next(d for d in drivers if "ci" not in d)
    assert no_ci["health"] is None
    did = site.driver_id(FC)
    body = site.json(f"/api/1.0/drivers/{did}/history")
    assert [(t["release"], t["from"], t["to"], t["change_number"]) for t in body["transitions"]] == [
        ("gazpacho", None, "success", 100)]
    assert set(body["transitions"][0]) == {"id", "release", "from", "to", "at", "change_number", "patch_set",
                                          "comment_time", "review_url", "cause"}
    # the site's change 100 merged (NOW - 1800) after the CI's success on it (NOW - 3600): the merge made the mark
    assert body["transitions"][0]["cause"] == "merge"
    iscsi = site.driver_id(ISCSI)
    site.store.commit(Batch("stream", [], changes=[merged(400, 3, NOW - 10)]))  # merged, and nobody verified it
    missed = site.json(f"/api/1.0/drivers/{iscsi}/missed?days=7")
    assert missed == {"days": 7, "missed": [{"change_number": 400, "branch": "master", "merged_time": NOW - 10,
                                             "review_url": None}]}
    assert site.get("/api/1.0/drivers/99999/history")[0] == 404
    assert site.get(f"/api/1.0/drivers/{iscsi}/missed?days=x")[0] == 400


def test_the_pages_show_health_search_at_risk_and_the_chart(site: Site) -> None:
    status, _, body = site.get("/?q=iscsi")
    page = body.decode()
    assert status == 200 and ISCSI in page and FC not in page  # the search matched one driver
    assert 'name="q"' in page and "<details" in page and "at risk only" in page
    assert FC in site.get("/?q=ACME-STORAGE-CI")[2].decode()  # CI account, any case
    assert ISCSI not in site.get("/?at_risk=1")[2].decode()  # unknown (null) is not at risk
    did = site.driver_id(FC)
    driver_page = site.get(f"/drivers/{did}")[2].decode()
    assert "CI health" in driver_page and "Mark history" in driver_page
    assert "<svg" in driver_page and 'role="img"' in driver_page and "2 passes and 0 failures" not in driver_page
    assert "1 pass and 1 failure over the last 90 days" in driver_page  # the chart's text alternative
    assert 'class="bar-pass"' in driver_page and 'class="bar-fail"' in driver_page
    assert "style=" not in driver_page  # the CSP allows no inline style: colours come from the stylesheet
