"""What a proposed registry would do to the marks (``registry diff --database``), read-only: on a file built under
one registry, the marks the preview says would appear, change or vanish are exactly the difference between
DriverLog's marks over the same events under the old registry and under the proposal, worked out directly from
the events (testing/history.driverlog_marks), and the file is not written."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from driverlog_daemon.registry import diff
from driverlog_daemon.registry.load import load_registry
from driverlog_daemon.source import replay
from driverlog_daemon.store import reads_preview, schema
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.registry_apply import HistorySettings
from driverlog_daemon.store.store import Store
from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.events import line
from driverlog_daemon.testing.history import driverlog_marks, history

NO_QUERIES = HistorySettings(90, 0, first=False, gerrit_now=0, queries=False)


def _driver(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in doc["drivers"] if d["name"] == name)


def test_the_preview_names_the_marks_that_judging_afresh_gives(tmp_path: Path) -> None:
    old = json.loads(DATA.read_text())
    new = copy.deepcopy(old)
    _driver(new, "Initech FlashBlade NVMe-TCP")["ci"]["success_pattern"] = "NEVER MATCHES"  # its successes go
    soylent = _driver(new, "Soylent SR-IOV NIC Agent")
    soylent["ci"] = {**soylent["ci"], "success_pattern": "NEVER", "failure_pattern": "SUCCESS|FAILURE"}  # all fail
    new["drivers"].remove(_driver(new, "Wayne OVN Gateway"))  # its marks go
    stark = _driver(new, "Stark Arc vGPU")
    new["drivers"].append({**copy.deepcopy(stark), "name": "Stark Arc vGPU (MIG)"})  # a new binding, marks appear
    _driver(new, "Umbrella HyperScale")["description"] = "reworded"  # changed, but no binding's meaning
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    old_registry, new_registry = load_registry(tmp_path / "old.json"), load_registry(tmp_path / "new.json")

    events = history(old_registry, days=200, changes=400, end=int(time.time()) - 3600, seed=11, ci_rate=0.5)
    (tmp_path / "stream.jsonl").write_bytes(b"".join(line(e) for e in events))
    db = tmp_path / "old.sqlite"
    pipeline = Pipeline(old_registry, Store(db))
    pipeline.apply_registry(old_registry, (tmp_path / "old.json").read_bytes(), NO_QUERIES)
    replay.replay(pipeline, str(tmp_path / "stream.jsonl"), jobs=1)
    pipeline.store.close()
    before_bytes = hashlib.sha256(db.read_bytes()).hexdigest()

    changes = diff.diff(old_registry, new_registry)
    assert {c.key[2]: c.fields for c in changes.changed} == {
        "Initech FlashBlade NVMe-TCP": ("ci.success_pattern",), "Umbrella HyperScale": ("description",),
        "Soylent SR-IOV NIC Agent": ("ci.success_pattern", "ci.failure_pattern")}
    assert [k[2] for k in changes.added] == ["Stark Arc vGPU (MIG)"]
    assert [k[2] for k in changes.removed] == ["Wayne OVN Gateway"]
    conn = schema.connect(db, readonly=True)
    got = reads_preview.preview(conn, changes.bindings, new_registry)
    conn.close()

    was = {k: m.result for k, m in driverlog_marks(events, old_registry).items()}
    will = {k: m.result for k, m in driverlog_marks(events, new_registry).items()}
    wanted = {k: (was.get(k), will.get(k)) for k in was.keys() | will.keys() if was.get(k) != will.get(k)}
    assert {(*m.key, m.release): (m.before, m.after) for m in got.marks} == wanted
    kinds = {m.kind for m in got.marks}
    assert kinds == {"appears", "changes", "vanishes"}, kinds  # the registry change above exercises all three
    initech = next(j for j in got.judged if j.key[2] == "Initech FlashBlade NVMe-TCP")
    assert initech.proposed["success"] == 0 and initech.now["success"] > 0
    assert initech.comments == sum(initech.proposed.values())
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before_bytes  # nothing written
