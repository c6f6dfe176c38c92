"""Re-judging from the kept comments, without Gerrit: a file built under one registry and judged again under another
holds what a file built from scratch under the other holds — verifications, latest activity, day counts, marks, the
transitions' ids — and a kept comment gives back what the matcher needs, an old server's approvals included.

(A changed review project is not among the changes here: the file never followed that project's merges, so its
marks need the import's queries; tests/system/test_history.py covers it against the Gerrit test server.)"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from driverlog_daemon.match.kept import MAX_BYTES, keep, restore
from driverlog_daemon.match.rules import comment_sha256, match_comment
from driverlog_daemon.model import Account, Approval, Change, CommentAdded
from driverlog_daemon.registry.load import load_registry
from driverlog_daemon.source import replay
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.reads import Reader
from driverlog_daemon.store.registry_apply import HistorySettings
from driverlog_daemon.store.store import Store
from driverlog_daemon.store.writer import Writer
from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import line
from driverlog_daemon.testing.history import history

NO_QUERIES = HistorySettings(90, 0, first=False, gerrit_now=0, queries=False)


def test_a_kept_comment_gives_back_what_the_matcher_judges() -> None:
    old_server = CommentAdded(Account("ceph-ci", "Ceph CI", "ci@example.org"),
                              Change("openstack/cinder", "stable/2024.1", 42, "I" + "1" * 40, "https://r/42", "NEW"),
                              3, "Build failed.", 1_780_000_000,
                              (Approval("Verified", "-1", "Verified", "0"), Approval("Code-Review", "1")))
    kept = keep(old_server, comment_sha256(old_server.comment))
    assert kept.approvals is not None  # no "Patch Set N:" line: the vote rule reads the approvals
    back = restore(_row(kept))
    assert back == old_server._replace(author=Account("ceph-ci"))  # name and e-mail are not kept
    registry = load_registry(DATA)._replace(by_account={})
    assert match_comment(back, registry) == match_comment(old_server, registry)
    current = old_server._replace(comment="Patch Set 3: Verified-1\n\nBuild failed.")
    assert keep(current, comment_sha256(current.comment)).approvals is None  # the first line says it all
    long = current._replace(comment="Patch Set 3:\n\n" + "x" * (MAX_BYTES + 10))
    kept = keep(long, comment_sha256(long.comment))
    assert kept.truncated == 1 and len(restore(_row(kept)).comment.encode()) == MAX_BYTES


def _row(k: Any) -> tuple[Any, ...]:
    return (k.ci_account, k.change_number, k.patch_set, k.comment_time, k.project, k.branch, k.change_status,
            k.review_url, k.change_id, k.body, k.approvals)


def _stream(tmp: Path, registry_path: Path) -> Path:
    events = history(load_registry(registry_path), days=200, changes=400, end=int(time.time()) - 3600, seed=5,
                     ci_rate=0.5)
    path = tmp / "stream.jsonl"
    path.write_bytes(b"".join(line(e) for e in events))
    return path


def _build(db: Path, registry_path: Path, stream: Path) -> Pipeline:
    registry = load_registry(registry_path)
    pipeline = Pipeline(registry, Store(db))
    pipeline.apply_registry(registry, registry_path.read_bytes(), NO_QUERIES)
    replay.replay(pipeline, str(stream), jobs=1)
    return pipeline


def _state(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "verifications": query(db, """SELECT d.name, v.change_number, v.patch_set, v.ci_account, v.comment_sha256,
                                             v.result, v.evidence, v.release, v.comment_time
                                      FROM verifications v JOIN drivers d ON d.id = v.driver_id
                                      ORDER BY 1, 2, 3, 4, 5"""),
        "driver_status": query(db, """SELECT d.name, s.release, v.change_number, v.patch_set, s.last_result,
                                             s.last_comment_time, s.last_success_time, s.verifications, s.successes
                                      FROM driver_status s JOIN drivers d ON d.id = s.driver_id
                                      JOIN verifications v ON v.id = s.last_verification_id ORDER BY 1, 2"""),
        "driver_days": query(db, "SELECT d.name, x.day, x.runs, x.passes FROM driver_days x JOIN drivers d "
                                 "ON d.id = x.driver_id ORDER BY 1, 2"),
        "marks": query(db, "SELECT d.name, m.release, m.change_number, m.patch_set, m.result FROM driver_marks m "
                           "JOIN drivers d ON d.id = m.driver_id ORDER BY 1, 2"),
        "transitions": query(db, "SELECT t.id, d.name, t.release, t.from_result, t.to_result, t.at "
                                 "FROM mark_transitions t JOIN drivers d ON d.id = t.driver_id ORDER BY 1"),
        "kept": query(db, "SELECT ci_account, change_number, patch_set, comment_sha256 FROM ci_comments "
                          "ORDER BY 1, 2, 3, 4"),
    }


def test_judging_again_equals_judging_afresh(tmp_path: Path) -> None:
    good = json.loads(DATA.read_text())
    stark = next(d for d in good["drivers"] if d["name"] == "Stark Arc vGPU")
    good["drivers"].append({**copy.deepcopy(stark), "name": "Stark Arc vGPU (MIG)"})  # stark-ci reports for two
    broken = copy.deepcopy(good)
    initech = next(d for d in broken["drivers"] if d["name"] == "Initech FlashBlade NVMe-TCP")
    initech["ci"]["success_pattern"] = r"initech-nvme-tcp-tempest \S+ : PASSED"  # its successes go unseen
    next(r for r in broken["releases"] if r["id"] == "Flamingo")["series"] = "2025.3"  # stable/2025.2 maps to none
    acme = next(d for d in broken["drivers"] if d["name"] == "Acme Volume Driver (iSCSI)")
    acme["ci"]["id"] = "umbrella-ci"  # another account
    soylent = next(d for d in broken["drivers"] if d["name"] == "Soylent SR-IOV NIC Agent")
    soylent["ci"] = {**soylent["ci"], "success_pattern": "NEVER", "failure_pattern": "SUCCESS|FAILURE"}  # all fail
    stark = next(d for d in broken["drivers"] if d["name"] == "Stark Arc vGPU")
    stark["ci"]["id"] = "hooli-nova-ci"  # another account's "Build succeeded" lines: verdicts that must go
    # (stark-ci stays registered for the other driver: its comments are kept, so the fixed binding finds them)
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    stream = _stream(tmp_path, tmp_path / "good.json")

    fresh = _build(tmp_path / "fresh.sqlite", tmp_path / "good.json", stream)
    fresh.store.close()
    pipeline = _build(tmp_path / "judged.sqlite", tmp_path / "broken.json", stream)
    before = _state(tmp_path / "judged.sqlite")
    assert before["verifications"] != _state(tmp_path / "fresh.sqlite")["verifications"]
    claimed = {(v[1], v[2]) for v in before["verifications"] if v[0] == "Stark Arc vGPU" and v[3] == "hooli-nova-ci"}
    assert claimed  # verdicts the fixed registry takes away

    good_registry = load_registry(tmp_path / "good.json")
    applied = pipeline.swap_registry(good_registry, (tmp_path / "good.json").read_bytes(), NO_QUERIES)
    assert applied is not None and applied.import_id is not None
    from driverlog_daemon.source.history import Importer

    writer = Writer(pipeline)
    writer.start()
    reader = Reader(pipeline.store.path)
    importer = Importer(reader, lambda: pipeline.registry, writer)
    try:
        while importer.step(None):  # no Gerrit: re-judging needs none
            pass
    finally:
        writer.stop()
        reader.close()
    assert query(tmp_path / "judged.sqlite", "SELECT finished_at IS NOT NULL, rejudged FROM imports")[0][0] == 1
    judged, wanted = _state(tmp_path / "judged.sqlite"), _state(tmp_path / "fresh.sqlite")
    for table in wanted:
        assert judged[table] == wanted[table], table
