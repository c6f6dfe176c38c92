"""Bad input and storage faults: counted, logged, retried — never fatal, nothing dropped."""

from __future__ import annotations

import json
import time
from pathlib import Path

from driverlog_daemon.pipeline import Pipeline
from driverlog_daemon.writer import Retry, Writer
from driverlog_daemon.registry import Registry
from driverlog_daemon.store import Store

from .conftest import comment_event, line
from .gerrit import SSHEnv, wait_until
from .test_stream import Harness, ci_event
from .test_writer import ci_line, count


def test_bad_lines_are_counted_by_reason_and_later_results_still_land(ssh_env: SSHEnv, tmp_path: Path) -> None:
    h = Harness(ssh_env, tmp_path, max_event_bytes=4 << 20)
    t = int(time.time())
    regex_bomb = "- acme-cinder-fc " + "x" * 200_000 + " : NOT_A_RESULT\n" + "acme-cinder-fc " * 20_000
    bad: list[tuple[bytes, str]] = [
        (b'{"type":"comment-added","author":{"username":"acme-storage-ci"},"comment":"tru\n', "invalid_json"),
        (b'{"type":"comment-added","comment":"\xff\xfe"}\n', "invalid_utf8"),
        (b"[1, 2, 3]\n", "not_object"),
        (line({**ci_event(10, t), "change": {**ci_event(10, t)["change"], "number": "ten"}}),
         "invalid_field:change.number"),
        (line({**ci_event(11, t), "patchSet": None}), "missing_field:patchSet.number"),
    ]
    null_author = line({**ci_event(12, t), "author": None})  # names no CI account: counted by type, not read
    with h:
        assert wait_until(h.settled)
        for i, (raw, _) in enumerate(bad):
            ssh_env.server.push_raw(raw)
            ssh_env.server.push_event(ci_event(100 + i, t))
        ssh_env.server.push_raw(null_author)
        ssh_env.server.push_raw(b'{"type":"x","junk":"' + b"a" * (20 << 20) + b'"}\n')  # a 20 MB line
        ssh_env.server.push_event(ci_event(200, t))
        ssh_env.server.push_raw(line({"type": "brand-new-event", "eventCreatedOn": t}))  # unknown type: counted
        big = ci_event(201, t)
        big["comment"] += "\n" + "- a-very-long-line " * 60_000  # a 1 MB comment, still a result
        ssh_env.server.push_event(big)
        started = time.monotonic()
        ssh_env.server.push_event(comment_event(comment=regex_bomb, number=202, created_on=t))  # no result
        ssh_env.server.push_event(ci_event(203, t, project="openstack/nova"))  # not the driver's project: none
        ssh_env.server.push_event(ci_event(204, t))
        assert wait_until(lambda: 204 in h.numbers(), timeout=30)
        print(f"regex-heavy comment and the rest processed in {time.monotonic() - started:.2f} s")
        assert h.numbers() == [100, 101, 102, 103, 104, 200, 201, 204]
        for _, reason in bad:
            assert h.metric("driverlog_malformed_lines_total", {"reason": reason}) == 1, reason
        assert h.metric("driverlog_oversized_lines_total") == 1
        assert h.metric("driverlog_events_total", {"type": "brand-new-event"}) == 1
        assert h.metric("driverlog_ci_comments_unmatched_total", {"ci_account": "acme-storage-ci"}) >= 1


def test_storage_faults_are_retried_until_they_clear(tmp_path: Path, registry: Registry) -> None:
    """A full database (max_page_count) and a read-only one (query_only): writes fail, the batch is kept and
    retried, the writer reports failing (so /healthz says 503 with the reason), and everything lands after."""
    path = tmp_path / "d.sqlite"
    store = Store(path)
    pipeline = Pipeline(registry, store)
    writer = Writer(pipeline, flush_seconds=0.01, retry=Retry(quiet=(0.01,)))
    writer.start()
    sample = pipeline.metrics.registry.get_sample_value
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    writer.put_block(b"".join(ci_line(n) for n in range(1, 200)))
    assert wait_until(lambda: (sample("driverlog_db_write_errors_total") or 0) >= 2)
    assert writer.failing and count(path) == 0
    store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert wait_until(lambda: not writer.failing and count(path) == 199)
    store.conn.execute("PRAGMA query_only = ON")  # read-only (a file mode does not stop root; this does)
    errors = sample("driverlog_db_write_errors_total") or 0
    writer.put_block(ci_line(500))
    assert wait_until(lambda: (sample("driverlog_db_write_errors_total") or 0) > errors + 1)
    assert writer.failing
    store.conn.execute("PRAGMA query_only = OFF")
    assert wait_until(lambda: not writer.failing and count(path) == 200)
    assert writer.stop()
    assert json.loads(json.dumps(count(path))) == 200
