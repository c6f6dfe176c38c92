"""DriverLog's 2014 registry form (its getting-started guide) and the vote rule of a CI without patterns."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driverlog_daemon.cli import main
from driverlog_daemon.match.rules import examine, examine_messages, judge_vote, new_scanner
from driverlog_daemon.model import Approval
from driverlog_daemon.registry.load import RegistryError, parse_registry
from driverlog_daemon.source.query import comments_from_row
from driverlog_daemon.source.replay import replay
from driverlog_daemon.store.pipeline import UNMEASURED, Pipeline
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import comment_event
from driverlog_daemon.testing.faults import reference
from driverlog_daemon.testing.gerrit.index import ChangeIndex
from driverlog_daemon.testing.net import http_get
from driverlog_daemon.testing.site import NOW, mixed_registry

#: the driver of DriverLog's "Getting Started" guide (May 2014), as the guide wrote it
GUIDE_DRIVER: dict[str, Any] = {
    "project_id": "openstack/cinder",
    "vendor": "Ceph",
    "name": "Ceph RADOS Block Device (RBD)",
    "description": "The Ceph RADOS Block Device driver allows to use Ceph RADOS block devices (RBD) for volumes.",
    "maintainer": {"name": "Josh Durgin, Mike Perez, Edward Hope-Morley", "email": "josh.durgin@inktank.com"},
    "wiki": "http://docs.openstack.org/trunk/config-reference/content/ceph-rados.html",
    "releases": ["Cactus", "Diablo", "Essex", "Folsom", "Grizzly", "Havana", "Icehouse"],
    "verification": "external_ci_verification",
    "ci_id": "ceph-ci",
}
GUIDE_RELEASES = [("Cactus", "2010-Oct-21"), ("Diablo", "2011-Apr-15"), ("Essex", "2011-Sep-22"),
                  ("Folsom", "2012-Apr-05"), ("Grizzly", "2012-Sep-27"), ("Havana", "2013-Apr-04"),
                  ("Icehouse", "2013-Oct-17")]


def guide_registry() -> dict[str, Any]:
    """The guide's driver in a registry of its time."""
    return {"projects": [{"id": "openstack/cinder", "name": "Cinder (Block Storage)"}],
            "releases": [{"id": r, "wiki": f"https://wiki.openstack.org/wiki/ReleaseNotes/{r}", "start": s}
                         for r, s in GUIDE_RELEASES],
            "drivers": [copy.deepcopy(GUIDE_DRIVER)]}


def write(tmp_path: Path, doc: dict[str, Any], name: str = "registry.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2))
    return path


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(RegistryError) as info:
        parse_registry(json.dumps(doc).encode())
    return info.value.errors


# ------------------------------------------------------------------------------------------------ the registry


def test_the_guides_example_validates_with_one_warning_per_2014_key(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(write(tmp_path, guide_registry()))]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: 1 drivers, 1 CI bindings, 1 CI accounts, 2 2014 keys")
    warnings = err.splitlines()
    assert len(warnings) == 2, err
    assert warnings[0].startswith("warning: drivers[0].maintainer: ") and '"maintainers": [{"name": "Josh Durgin"' \
        in warnings[0]
    assert warnings[1].startswith("warning: drivers[0].ci_id: ") and '"ci": {"id": "ceph-ci"}' in warnings[1]


def test_the_guides_example_loads_as_todays_model() -> None:
    registry = parse_registry(json.dumps(guide_registry()))
    (driver,) = registry.drivers
    assert [dict(m) for m in driver.maintainers] == [
        {"name": "Josh Durgin", "email": "josh.durgin@inktank.com"}, {"name": "Mike Perez"},
        {"name": "Edward Hope-Morley"}]
    assert driver.ci is not None and driver.ci.account == "ceph-ci" and driver.ci.by_vote
    assert driver.verification == "external_ci_verification"
    assert registry.by_account["ceph-ci"] == (driver,) and registry.review_projects == {"openstack/cinder"}
    assert len(registry.legacy) == 2


def test_strict_makes_the_2014_keys_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--strict", str(write(tmp_path, guide_registry()))]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["drivers[0].maintainer", "drivers[0].ci_id"]


def test_upgrade_prints_a_registry_that_is_strictly_valid_and_means_the_same(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for doc in (guide_registry(), mixed_registry()):
        assert main(["validate", "--upgrade", str(write(tmp_path, doc))]) == 0
        upgraded = capsys.readouterr().out
        assert "ci_id" not in upgraded and '"maintainer"' not in upgraded
        strict = write(tmp_path, json.loads(upgraded), "upgraded.json")
        assert main(["validate", "--strict", str(strict)]) == 0, capsys.readouterr().err
        assert capsys.readouterr().err == ""  # no warning left
        before, after = parse_registry(json.dumps(doc)), parse_registry(strict.read_bytes())
        assert after.drivers == before.drivers and after.by_account == before.by_account
        assert after.legacy == ()


def test_a_2014_key_beside_its_modern_twin_is_an_error_naming_both() -> None:
    doc = guide_registry()
    doc["drivers"][0]["maintainers"] = [{"name": "Josh Durgin"}]
    doc["drivers"][0]["ci"] = {"id": "ceph-ci", "success_pattern": "ok", "failure_pattern": "bad"}
    errors = errors_of(doc)
    assert any("both 'maintainers' and its 2014 form 'maintainer'" in e for e in errors), errors
    assert any("both 'ci' and its 2014 form 'ci_id'" in e for e in errors), errors


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d.update(verified_by="x"), "'verified_by' was unexpected"),
    (lambda d: d.update(verification="trust_me"), "drivers[0].verification: 'trust_me' is not one of"),
    (lambda d: d.update(ci_id="two words"), "drivers[0].ci_id: 'two words' does not match"),
    (lambda d: d["maintainer"].update(phone="1"), "drivers[0].maintainer: Additional properties"),
    (lambda d: d.update(releases=["Kilo"]), "drivers[0].releases[0]: 'Kilo' is not among releases"),
])
def test_everything_else_stays_as_strict(mutate: Any, expected: str) -> None:
    doc = guide_registry()
    mutate(doc["drivers"][0])
    assert any(expected in e for e in errors_of(doc)), errors_of(doc)


def test_a_modern_ci_needs_both_patterns_or_neither() -> None:
    doc = guide_registry()
    del doc["drivers"][0]["ci_id"]
    doc["drivers"][0]["ci"] = {"id": "ceph-ci", "success_pattern": "SUCCESS"}
    assert any("'failure_pattern' is a dependency of 'success_pattern'" in e for e in errors_of(doc))


# ------------------------------------------------------------------------------------------------ the vote rule

V = Approval("Verified", "1", "Verified", "0")


@pytest.mark.parametrize(("comment", "approvals", "expected"), [
    ("Patch Set 3: Verified+1\n\nBuild succeeded.", (V,), ("success", "Verified+1")),
    ("Patch Set 3: Verified+2", (), ("success", "Verified+2")),
    ("Patch Set 3: Code-Review+1 Verified-1\n\nBuild failed.", (), ("failure", "Verified-1")),
    ("Patch Set 3: Verified-2", (), ("failure", "Verified-2")),
    ("Patch Set 3: VRIF+1", (), ("success", "VRIF+1")),
    # the first line decides: the approvals also list the votes this comment did not cast
    ("Patch Set 3:\n\nStarting check jobs.", (Approval("Verified", "1", "Verified"),), None),
    ("Patch Set 3: Code-Review+1\n\nVerified+1 would be nice", (), None),
    ("Patch Set 3: -Verified\n\nvote removed", (), None),
    ("Patch Set 3: Verified+1Extra", (), None),
    # an old server's event, without the first line: its approvals
    ("Build succeeded.", (Approval("VRIF", "1", "Verified"),), ("success", "Verified+1")),
    ("Build failed.", (Approval("VRIF", "-1"),), ("failure", "VRIF-1")),
    ("Build failed.", (Approval("Code-Review", "0", "Code-Review", "0"), Approval("Verified", "-1", "Verified", "0")),
     ("failure", "Verified-1")),
    ("Recheck queued.", (Approval("Code-Review", "1", "Code-Review", "0"), Approval("Verified", "1", "Verified")),
     None),  # Verified unchanged by this comment
    ("Just a comment.", (Approval("Verified", "0"),), None),
    ("Just a comment.", (), None),
])
def test_the_vote_rule(comment: str, approvals: tuple[Approval, ...], expected: tuple[str, str] | None) -> None:
    assert judge_vote(comment, approvals) == expected


LABELS = ("Verified", "Code-Review", "Workflow")
review = st.fixed_dictionaries({
    "form": st.sampled_from(["current", "old, oldValue marks the cast votes", "old, no oldValue", "VRIF"]),
    "cast": st.dictionaries(st.sampled_from(LABELS), st.integers(-2, 2)),
    "standing": st.dictionaries(st.sampled_from(LABELS), st.integers(-2, 2)),  # earlier votes on the patch set
    "text": st.sampled_from(["Build succeeded.", "Build failed.\n\n- job https://ci/1 : FAILURE",
                             "Verified+1 by hand?", "", "Starting check jobs."]),
    "author": st.sampled_from(["ceph-ci", "ceph-ci", "acme-storage-ci"]),
    "change": st.integers(1, 4), "patch_set": st.integers(1, 3),
})


def gerrit_event(r: dict[str, Any], at: int) -> dict[str, Any]:
    """One review as a Gerrit of the given age writes its comment-added event (each with its own text: one row
    each)."""
    text = f"{r['text']}\nrun at {at}"
    cast = {k: v for k, v in r["cast"].items() if v != 0}
    label = "VRIF" if r["form"] == "VRIF" else None
    approvals = []
    for name in LABELS:
        if name in r["cast"]:
            a = {"type": label if (label and name == "Verified") else name, "description": name,
                 "value": str(r["cast"][name])}
            if r["form"] in ("current", "old, oldValue marks the cast votes"):
                a["oldValue"] = str(r["standing"].get(name, 0))
            approvals.append(a)
        elif name in r["standing"] and r["form"] != "old, no oldValue":
            approvals.append({"type": name, "description": name, "value": str(r["standing"][name])})
    if r["form"] == "current":
        votes = "".join(f" {k}{v:+d}" for k, v in cast.items())
        comment = f"Patch Set {r['patch_set']}:{votes}\n\n{text}"
    else:
        comment = text
    return comment_event(author=r["author"], comment=comment, number=r["change"], patch_set=r["patch_set"],
                         created_on=at, approvals=approvals)


def outcome(verifications: Any) -> set[tuple[Any, ...]]:
    return {(v.driver_key[2], v.change_number, v.patch_set, v.comment_sha256, v.comment_time, v.result, v.evidence)
            for v in verifications}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(review, min_size=1, max_size=12))
def test_stream_backfill_and_replay_record_the_same_vote_judged_verifications(reviews: list[dict[str, Any]]) -> None:
    registry = parse_registry(json.dumps(mixed_registry()))
    events = [gerrit_event(r, 1_780_000_000 + 60 * i) for i, r in enumerate(reviews)]
    block = "".join(json.dumps(e) + "\n" for e in events).encode()
    streamed = outcome(examine(new_scanner(registry), registry, block).verifications)

    index = ChangeIndex()
    for event in events:
        index.record(event)
    accounts = frozenset(registry.ci_accounts)
    messages = [c for stored in index.changes.values()
                for c in comments_from_row(json.loads(json.dumps(
                    stored.row(comments=True, current_patch_set=True, patch_sets=False))), accounts, 0)]
    backfilled = outcome(examine_messages(messages, [], registry).verifications)

    with tempfile.TemporaryDirectory() as work:
        recorded = Path(work) / "stream.jsonl"
        recorded.write_bytes(block)
        with Store(Path(work) / "db.sqlite") as store:
            replay(Pipeline(registry, store, metrics=UNMEASURED), str(recorded))
        replayed = set(query(Path(work) / "db.sqlite",
                             "SELECT d.name, v.change_number, v.patch_set, v.comment_sha256, v.comment_time, v.result,"
                             " v.evidence FROM verifications v JOIN drivers d ON d.id = v.driver_id"))

    expected = {(name, change, ps, result, evidence) for name, change, ps, result, evidence, _ in
                reference(events, registry)}
    assert {v[:3] + v[5:] for v in streamed} == expected
    assert streamed == backfilled == replayed
    vote_judged = {v for v in streamed if v[0].startswith("RBD")}
    assert all(v[6].startswith(("Verified", "VRIF")) for v in vote_judged)


# ------------------------------------------------------------------------------------------------ everywhere


def test_a_mixed_registry_works_on_the_page_the_api_and_the_metrics(tmp_path: Path) -> None:
    from driverlog_daemon.expose.web.app import App
    from driverlog_daemon.metrics import WebMetrics
    from driverlog_daemon.store import reads, reads_health
    from driverlog_daemon.testing.http import ThreadedServer

    registry = parse_registry(json.dumps(mixed_registry()))
    db = tmp_path / "d.sqlite"
    store = Store(db)
    store.sync_drivers(registry)
    merged_at = NOW - 3 * 86400
    events = [gerrit_event({"form": "current", "cast": {"Verified": 1}, "standing": {}, "text": "Build succeeded.",
                            "author": "ceph-ci", "change": 7001, "patch_set": 2}, merged_at - 600),
              gerrit_event({"form": "old, no oldValue", "cast": {"Verified": -1}, "standing": {}, "text": "Failed.",
                            "author": "ceph-ci", "change": 7002, "patch_set": 1}, NOW - 3600),
              {"type": "change-merged", "change": {"project": "openstack/cinder", "branch": "master", "number": 7001,
                                                   "status": "MERGED", "url": "https://review.example.org/7001"},
               "patchSet": {"number": 2}, "eventCreatedOn": merged_at}]
    findings = examine(new_scanner(registry), registry, "".join(json.dumps(e) + "\n" for e in events).encode())
    assert len(findings.verifications) == 4  # two drivers on ceph-ci, two reviews
    store.commit(Batch("stream", findings.verifications, changes=findings.changes))
    metrics = WebMetrics(multiprocess=False)
    metrics.watch_releases(lambda: reads.release_times(store.conn))
    metrics.watch_health(lambda: [(p, v, n, h["pass_rate"]["30"], h["coverage"]["ratio"], h["at_risk"])
                                  for (p, v, n, _), h in reads_health.registered_ci_health(store.conn, NOW, 14)])
    app = App(db, lambda: registry, metrics, lambda: (True, {}), stale_after_days=7, max_staleness=0)
    web = ThreadedServer(app, "127.0.0.1", 0)
    web.start()
    try:
        status, _, body = http_get(web.port, "/api/1.0/drivers?release_id=gazpacho")
        records = {d["name"]: d for d in json.loads(body)["drivers"]}
        rbd, self_verified = records["RBD"], records["RBD (self)"]
        assert rbd["verification"] == "external_ci_verification" and rbd["ci"] == {"id": "ceph-ci"}
        assert records["RBD (iSCSI)"]["verification"] == "3rd_party_verification"
        assert self_verified["verification"] == "self_verification" and "ci" not in self_verified
        assert rbd["maintainers"] == [{"name": "Josh Durgin"}]  # no e-mail address shown
        assert rbd["releases"]["gazpacho"] == {
            "ci_tested": True, "ci_result": True, "comment": "Verified+1", "timestamp": merged_at - 600,
            "review_url": "https://review.example.org/c/openstack/cinder/+/7001"}
        assert rbd["latest"]["result"] == "failure" and rbd["latest"]["comment"] == "Verified-1"
        assert rbd["health"]["runs"]["7"] == 2 and rbd["health"]["coverage"]["covered"] == 1
        assert records["Acme Volume Driver (FC)"]["ci"]["success_pattern"]  # the modern ones unchanged

        status, _, page = http_get(web.port, f"/drivers/{rbd['id']}")
        assert status == 200
        assert b"Verified by an external CI" in page and b"judged by its Verified vote" in page
        assert b"josh@example.org" not in page
        history = json.loads(http_get(web.port, f"/api/1.0/drivers/{rbd['id']}/history")[2])["transitions"]
        assert [(t["release"], t["from"], t["to"]) for t in history] == [("gazpacho", None, "success")]
        from prometheus_client.parser import text_string_to_metric_families

        scraped = {(m.name, tuple(sorted(m.labels.items()))): m.value for family in
                   text_string_to_metric_families(http_get(web.port, "/metrics")[2].decode()) for m in family.samples}
        labels = (("driver", "RBD"), ("project", "openstack/cinder"), ("vendor", "Ceph"))
        assert scraped[("driverlog_driver_pass_ratio_30d", labels)] == 0.5
        mark = ("driverlog_driver_release_last_mark_success_timestamp_seconds",
                tuple(sorted((*labels, ("release", "Gazpacho")))))
        assert scraped[mark] == merged_at - 600  # the passing mark's comment time
    finally:
        web.stop()
        store.close()


def test_the_daemon_says_how_many_2014_keys_it_loaded(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from driverlog_daemon.config import Config, DatabaseConfig, RegistryConfig
    from driverlog_daemon.daemon.service import Service

    config = Config(registry=RegistryConfig(str(write(tmp_path, mixed_registry()))),
                    database=DatabaseConfig(str(tmp_path / "d.sqlite")))
    with capture_logs() as logs:
        service = Service(config, http=False)
        service.start()
        assert service.stop()
    (said,) = [e for e in logs if e["event"] == "registry_2014_keys"]
    assert said["count"] == 4 and "validate --upgrade" in said["hint"]  # two drivers, maintainer and ci_id each
