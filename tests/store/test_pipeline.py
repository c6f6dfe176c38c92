"""The pure step (scan + match of a block, or of backfilled messages) and the counting of what it found."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.match import rules
from driverlog_daemon.match.rules import examine, examine_messages, new_scanner
from driverlog_daemon.model import ChangeFact, CommentAdded
from driverlog_daemon.parse.events import parse_line
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.pipeline import Pending, Pipeline
from driverlog_daemon.store.store import Store
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import ci_line, comment_event, line, other_event, state_event
from driverlog_daemon.testing.site import verification


def block() -> bytes:
    return b"".join([
        ci_line(1),  # a success of the Acme FC driver
        line(comment_event(author="acme-storage-ci", comment="Patch Set 1:\n\nnothing to see", number=2)),  # unmatched
        line(comment_event(author="jdev", comment="lgtm", number=3)),  # a person
        line(state_event("change-merged", 1, 1)),  # the change of the result merged
        line(state_event("change-merged", 9, 1, project="openstack/horizon")),  # not a review project
        line(other_event("dropped-output", 1_750_000_100)),
        b"not json\n",
    ])


def test_a_blocks_findings_hold_every_count_result_and_change_fact(registry: Registry) -> None:
    found = examine(new_scanner(registry), registry, block())
    assert found.lines == 7 and found.dropped_output == 1
    assert [(v.change_number, v.result) for v in found.verifications] == [(1, "success")]
    assert found.ci_comments == {"acme-storage-ci": 2} and found.unmatched == {"acme-storage-ci": 1}
    assert sorted(found.changes.rows) == [1, 2]  # change 1 merged, and the changes of both CI comments
    assert found.changes.rows[1][3] == "MERGED"
    assert [m.reason for m in found.malformed] == ["invalid_json"]
    assert found.comments == []  # matched, then forgotten


def test_findings_cross_processes_whole(registry: Registry) -> None:
    found = examine(new_scanner(registry), registry, block())
    again = pickle.loads(pickle.dumps(found))
    for field in ("lines", "by_type", "malformed", "ci_comments", "unmatched", "verifications", "newest_event_time"):
        assert getattr(again, field) == getattr(found, field), field
    assert again.changes.rows == found.changes.rows
    assert type(again.verifications[0]) is type(found.verifications[0])  # named tuples again


def test_backfilled_messages_keep_only_the_review_projects_change_facts(registry: Registry) -> None:
    comment = parse_line(ci_line(5))
    assert isinstance(comment, CommentAdded)
    horizon = ChangeFact(7, "openstack/horizon", "master", "MERGED", 1, 1, 1, 1)
    cinder = ChangeFact(8, "openstack/cinder", "master", "MERGED", 1, 1, 1, 1)
    found = examine_messages([comment], [horizon, cinder], registry)
    assert [v.change_number for v in found.verifications] == [5]
    assert sorted(found.changes.rows) == [5, 8]


def test_counted_once_and_committed_with_the_cursor(tmp_path: Path, registry: Registry) -> None:
    pipeline = Pipeline(registry, Store(tmp_path / "d.sqlite"), server="gerrit:29418")
    pending = Pending()
    pipeline.absorb(pipeline.examine(block()), pending)
    pipeline.locate(block(), time.monotonic(), pending)
    assert pipeline.stats.lines == 7 and pipeline.stats.ci_comments == 2
    assert pipeline.metrics.registry.get_sample_value("driverlog_malformed_lines_total",
                                                      {"reason": "invalid_json"}) == 1
    result = pipeline.commit(pending, "stream")
    assert result.inserted == 1 and pipeline.stats.recorded == 1
    db = tmp_path / "d.sqlite"
    assert query(db, "SELECT change_number, source FROM verifications") == [(1, "stream")]
    # the last stamped line's time, not the newest (the merge's, T)
    assert query(db, "SELECT last_event_time FROM stream_state") == [(1_750_000_100,)]
    assert pending.verifications == [] and len(pending.changes) == 0


def test_a_line_no_rule_foresaw_costs_itself_alone(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    real = rules.match_comment

    def match_comment(event: CommentAdded, reg: Registry, **kw: Any) -> Any:
        if event.change.number == 2:
            raise RuntimeError("a bug only this comment reaches")
        return real(event, reg, **kw)

    monkeypatch.setattr(rules, "match_comment", match_comment)
    found = examine(new_scanner(registry), registry, ci_line(1) + ci_line(2) + ci_line(3))
    assert [v.change_number for v in found.verifications] == [1, 3]
    assert [m.reason for m in found.malformed] == ["internal_error:RuntimeError"]
    assert found.lines == 3
    comments = [parse_line(ci_line(n)) for n in (4, 2, 5)]
    again = examine_messages([c for c in comments if isinstance(c, CommentAdded)], [], registry)
    assert [v.change_number for v in again.verifications] == [4, 5]
    assert [m.reason for m in again.malformed] == ["internal_error:RuntimeError"]


def test_a_row_sqlite_cannot_bind_costs_its_row_alone(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "d.sqlite"
    with Store(path) as store:
        pipeline = Pipeline(registry, store, server="gerrit:29418")
        pending = Pending()
        good = verification(registry, number=7)
        pending.verifications += [good._replace(change_number=2 ** 63), good,
                                  good._replace(change_number=8, evidence="\ud800")]
        pending.position = 2 ** 64
        result = pipeline.commit(pending, "stream")
        assert result.inserted == 1 and store.cursor("gerrit:29418") is None
    assert query(path, "SELECT change_number FROM verifications") == [(7,)]
    sample = pipeline.metrics.registry.get_sample_value
    assert sample("driverlog_malformed_lines_total", {"reason": "unstorable:out_of_range"}) == 1
    assert sample("driverlog_malformed_lines_total", {"reason": "unstorable:invalid_unicode"}) == 1
