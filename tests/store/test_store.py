from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from driverlog_daemon.registry.load import Registry, parse_registry
from driverlog_daemon.store.schema import connect
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.site import verification


def test_a_bulk_import_checkpoints_less_often_and_then_as_before(store: Store) -> None:
    def setting() -> int:
        return int(store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    before = setting()
    with store.checkpoints_every(before * 10):
        assert setting() == before * 10
    assert setting() == before
    with pytest.raises(ZeroDivisionError), store.checkpoints_every(7):
        1 / 0  # noqa: B018
    assert setting() == before


def test_same_comment_from_every_source_is_one_row(store: Store, registry: Registry) -> None:
    v = verification(registry)
    first = store.commit(Batch("stream", [v]))
    # the backfilled copy of the same message has a timestamp a second later: same natural key
    again = store.commit(Batch("backfill", [v._replace(comment_time=v.comment_time + 1)]))
    third = store.commit(Batch("replay", [v, v]))
    assert (first.inserted, again.inserted, third.inserted) == (1, 0, 0)
    assert (again.already_present, third.already_present) == (1, 2)
    rows = store.conn.execute("SELECT source, comment_time FROM verifications").fetchall()
    assert rows == [("stream", v.comment_time)]


def test_different_patch_set_or_comment_is_a_new_row(store: Store, registry: Registry) -> None:
    v = verification(registry)
    res = store.commit(Batch("stream", [v, v._replace(patch_set=2), v._replace(comment_sha256="b" * 64),
                              verification(registry, driver_index=1)]))
    assert res.inserted == 4


def test_driver_status_newest_by_comment_time_even_out_of_order(store: Store, registry: Registry) -> None:
    t = 1_750_000_000
    # arrival order: newest success, then an older failure, then an older success, then an even older failure
    store.commit(Batch("stream", [verification(registry, ps=3, t=t + 300, result="success", sha="3" * 64)]))
    store.commit(Batch("backfill", [verification(registry, ps=2, t=t + 200, result="failure", sha="2" * 64)]))
    store.commit(Batch("backfill", [verification(registry, ps=1, t=t + 100, result="success", sha="1" * 64),
                        verification(registry, ps=0, t=t, result="failure", sha="0" * 64)]))
    row = store.conn.execute(
        "SELECT last_result, last_comment_time, last_success_time, verifications, successes FROM driver_status"
    ).fetchone()
    assert row == ("success", t + 300, t + 300, 4, 2)
    # a newer failure takes over last result, keeps last success
    store.commit(Batch("stream", [verification(registry, ps=4, t=t + 400, result="failure", sha="4" * 64)]))
    row = store.conn.execute(
        "SELECT s.last_result, s.last_comment_time, s.last_success_time, v.patch_set, vs.patch_set "
        "FROM driver_status s JOIN verifications v ON v.id = s.last_verification_id "
        "JOIN verifications vs ON vs.id = s.last_success_verification_id").fetchone()
    assert row == ("failure", t + 400, t + 300, 4, 3)


def test_driver_status_is_per_release(store: Store, registry: Registry) -> None:
    store.commit(Batch("stream", [verification(registry, release="Gazpacho"),
                                  verification(registry, release="", sha="b" * 64)]))
    assert store.conn.execute("SELECT release FROM driver_status ORDER BY release").fetchall() == [("",), ("Gazpacho",)]


def test_view_for_people(store: Store, registry: Registry) -> None:
    store.commit(Batch("stream", [verification(registry, t=1_750_000_000)]))
    row = dict(zip(["vendor", "release", "last_result", "last_result_at", "removed"],
                   store.conn.execute("SELECT vendor, release, last_result, last_result_at, removed "
                                      "FROM driver_ci_status").fetchone(), strict=True))
    assert row == {"vendor": "Acme Storage", "release": "Gazpacho", "last_result": "success",
                   "last_result_at": "2025-06-15 15:06:40", "removed": 0}


def test_the_cursor_follows_the_stream_back_but_never_across_an_open_gap(store: Store, registry: Registry) -> None:
    store.commit(Batch("stream", cursor=("gerrit:29418", 100)))
    store.commit(Batch("stream", cursor=("gerrit:29418", 90)))  # Gerrit's clock stepped back
    assert store.cursor("gerrit:29418") == 90  # 90..100 is not proven any more: what comes next is stamped there
    store.open_gap("gerrit:29418", 80, "reconnect")
    store.commit(Batch("stream", cursor=("gerrit:29418", 120)))
    assert store.cursor("gerrit:29418") == 80
    assert store.cursor("other") is None


def test_removed_driver_is_marked_and_keeps_history(tmp_path: Path, store: Store, registry: Registry) -> None:
    store.commit(Batch("stream", [verification(registry)]))
    ids_before = dict(store.conn.execute("SELECT name, id FROM drivers").fetchall())
    doc = json.loads(DATA.read_text())
    gone = doc["drivers"].pop(0)
    smaller = parse_registry(json.dumps(doc))
    store.sync_drivers(smaller)
    removed = store.conn.execute("SELECT name, removed_at FROM drivers WHERE removed_at IS NOT NULL").fetchall()
    assert removed == [(gone["name"], 1_800_000_000.0)]
    assert store.conn.execute("SELECT count(*) FROM verifications").fetchone()[0] == 1
    # back in the registry: same id, no longer removed
    store.sync_drivers(registry)
    assert dict(store.conn.execute("SELECT name, id FROM drivers").fetchall()) == ids_before
    assert store.conn.execute("SELECT count(*) FROM drivers WHERE removed_at IS NOT NULL").fetchone()[0] == 0


def test_changed_pattern_updates_driver_row(store: Store, registry: Registry) -> None:
    before = store.conn.total_changes
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    store.sync_drivers(registry)  # the same registry again: nothing to write, no statement to write it
    store.conn.set_trace_callback(None)
    assert store.conn.total_changes == before and not [s for s in statements if "INSERT" in s or "UPDATE" in s]
    doc = json.loads(DATA.read_text())
    doc["drivers"][0]["ci"]["success_pattern"] = "NEW PATTERN"
    store.sync_drivers(parse_registry(json.dumps(doc)))
    assert store.conn.execute("SELECT success_pattern FROM drivers WHERE name = ?",
                              (doc["drivers"][0]["name"],)).fetchone()[0] == "NEW PATTERN"
    assert store.conn.total_changes == before + 1  # that row only


def test_readonly_connection_cannot_write(store: Store) -> None:
    ro = connect(store.path, readonly=True)
    assert ro.execute("SELECT count(*) FROM drivers").fetchone()[0] == 14
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("DELETE FROM drivers")


READER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    batch, batches = int(sys.argv[2]), int(sys.argv[3])
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn.execute("BEGIN")  # one snapshot for both reads
        n = conn.execute("SELECT count(*) FROM verifications").fetchone()[0]
        s = conn.execute("SELECT coalesce(sum(verifications), 0) FROM driver_status").fetchone()[0]
        conn.execute("COMMIT")
        assert n % batch == 0, f"half a batch visible: {n}"
        assert s == n, f"driver_status ({s}) out of step with verifications ({n})"
        if n not in seen:
            seen.add(n)
            print(n, flush=True)  # each state seen, as it is seen: the writer waits for some of them
        if n == batch * batches:
            break
""")


def test_another_process_reads_while_the_writer_commits(store: Store, registry: Registry) -> None:
    """A reader in another process, reading all along, never sees half a batch nor a summary out of step with the
    rows. The writer waits, every ``step`` batches, until the reader has seen that state: it reads between
    commits, not only before or after them all."""
    batch, batches, step = 200, 40, 8
    reader = subprocess.Popen([sys.executable, "-c", READER, store.path, str(batch), str(batches)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    seen = [int(reader.stdout.readline())]  # it reads the empty file first
    for b in range(batches):
        store.commit(Batch("stream", [verification(registry, number=b * batch + i) for i in range(batch)]))
        if (b + 1) % step == 0:
            while seen[-1] != (b + 1) * batch:  # a state it skipped is fine; it cannot see one ahead of the writer
                line = reader.stdout.readline()
                assert line, reader.stderr.read() if reader.stderr else ""
                seen.append(int(line))
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert seen[0] == 0 and seen[-1] == batch * batches
    assert len(seen) >= batches // step + 1  # the empty file and at least each state the writer waited for


def test_batches_of_any_size_go_in_whole(store: Store, registry: Registry) -> None:
    """Rows go in as VALUES statements of 256, 128, …, 1 rows: every size of batch lands completely."""
    for size in (1, 255, 256, 257, 777):
        batch = [verification(registry, number=100_000 * size + i) for i in range(size)]
        assert store.commit(Batch("replay", batch)).inserted == size
        assert store.commit(Batch("replay", batch)).already_present == size
    assert store.conn.execute("SELECT count(*) FROM verifications").fetchone()[0] == 1 + 255 + 256 + 257 + 777
