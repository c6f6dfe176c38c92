"""DriverLog's "CI tested" marks: change state x verifications -> driver_marks, whatever the order and the source.

The expected marks come from :func:`reference_marks`, written here from the definition (issue: the newest
verification, by comment time, on the patch set that merged), not from the daemon's code.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driverlog_daemon.model import ChangeFact, Verification
from driverlog_daemon.parse.changes import ChangeRows
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.events import PROJECT, T, comment_event, state_event
from driverlog_daemon.testing.harness import Harness

# ------------------------------------------------------------------------------------------------ the reference


@dataclass(frozen=True)
class Vote:
    """A CI result as the generator wrote it: for ``driver`` (an index into the CI drivers), on a change."""

    driver: int
    release: str
    change: int
    ps: int
    time: int
    sha: str
    result: str


@dataclass(frozen=True)
class State:
    """A change-state fact: kind is patchset-created, change-merged, change-abandoned, change-restored,
    merged-row (a ``gerrit query`` row of a merged change) or comment-merged (a comment saw status MERGED)."""

    change: int
    kind: str
    ps: int
    time: int


def reference_marks(votes: list[Vote], states: list[State]) -> dict[tuple[int, str], tuple[int, int, str, int]]:
    """(driver, release) -> (change, patch set, result, comment time) of the mark, from the definition."""
    merged = {s.change: s.ps for s in states if s.kind in ("change-merged", "merged-row")}
    best: dict[tuple[int, str], Vote] = {}
    for v in votes:
        if v.release == "" or merged.get(v.change) != v.ps:
            continue
        key = (v.driver, v.release)
        old = best.get(key)
        if old is None or (v.time, v.change, v.ps, v.sha) > (old.time, old.change, old.ps, old.sha):
            best[key] = v
    return {k: (v.change, v.ps, v.result, v.time) for k, v in best.items()}


def reference_history(votes: list[Vote], states: list[State]) -> dict[tuple[int, str], list[tuple[Any, ...]]]:
    """(driver, release) -> [(at, from, to, change, patch set), …]: the mark at every moment a candidate became
    eligible, computed afresh each time (the definition, not the store's sweep)."""
    merged_ps = {s.change: s.ps for s in states if s.kind in ("change-merged", "merged-row")}
    merged_at: dict[int, int] = {}
    for s in states:
        if s.kind in ("change-merged", "merged-row", "comment-merged"):
            merged_at[s.change] = min(merged_at.get(s.change, s.time), s.time)
    candidates: dict[tuple[int, str], list[tuple[int, Vote]]] = {}
    for v in votes:
        if v.release != "" and merged_ps.get(v.change) == v.ps:
            candidates.setdefault((v.driver, v.release), []).append((max(v.time, merged_at[v.change]), v))
    out: dict[tuple[int, str], list[tuple[Any, ...]]] = {}
    for pair, cands in candidates.items():
        shown: str | None = None
        for t in sorted({e for e, _ in cands}):
            best = max((v for e, v in cands if e <= t), key=lambda v: (v.time, v.change, v.ps, v.sha))
            if best.result != shown:
                out.setdefault(pair, []).append((t, shown, best.result, best.change, best.ps))
                shown = best.result
    return out


def transitions_in(conn: sqlite3.Connection, registry: Registry) -> dict[tuple[int, str], list[tuple[Any, ...]]]:
    index = {d.key: i for i, d in enumerate(ci_drivers(registry))}
    out: dict[tuple[int, str], list[tuple[Any, ...]]] = {}
    for p, vd, n, rel, at, frm, to, c, ps in conn.execute(
            """SELECT d.project_id, d.vendor, d.name, t.release, t.at, t.from_result, t.to_result, t.change_number,
                      t.patch_set FROM mark_transitions t JOIN drivers d ON d.id = t.driver_id ORDER BY t.at"""):
        out.setdefault((index[(p, vd, n)], rel), []).append((at, frm, to, c, ps))
    return out


def reference_status(states: list[State]) -> dict[int, str]:
    """A merge is final; otherwise the newest fact's status (equal times: abandoned first)."""
    out: dict[int, tuple[int, int, str]] = {}
    status_of = {"change-merged": "MERGED", "merged-row": "MERGED", "comment-merged": "MERGED",
                 "change-abandoned": "ABANDONED", "change-restored": "NEW", "patchset-created": "NEW"}
    for s in states:
        status = status_of[s.kind]
        rank = (2 if status == "MERGED" else 0, s.time, status == "ABANDONED")
        if s.change not in out or rank > (*out[s.change][:2], out[s.change][2] == "ABANDONED"):
            out[s.change] = (rank[0], s.time, status)
    return {c: v[2] for c, v in out.items()}


# ------------------------------------------------------------------------------------- building store inputs



def ci_drivers(registry: Registry) -> list[Any]:
    return [d for d in registry.drivers if d.ci and d.review_project == PROJECT]


def as_verification(v: Vote, registry: Registry) -> Verification:
    d = ci_drivers(registry)[v.driver]
    assert d.ci is not None
    return Verification(driver_key=d.key, ci_account=d.ci.account, change_number=v.change, patch_set=v.ps,
                        comment_sha256=v.sha * 64, comment_time=v.time, result=v.result,  # type: ignore[arg-type]
                        evidence=f"- job : {v.result}", project=PROJECT, branch="master", release=v.release,
                        change_status=None, review_url=f"https://review.example.org/{v.change}", change_id=None)


def as_fact(s: State) -> ChangeFact:
    status = {"change-merged": "MERGED", "merged-row": "MERGED", "comment-merged": "MERGED",
              "change-abandoned": "ABANDONED", "change-restored": "NEW", "patchset-created": "NEW"}[s.kind]
    merged_ps = s.ps if s.kind in ("change-merged", "merged-row") else None
    return ChangeFact(number=s.change, project=PROJECT, branch="master", status=status, time=s.time,
                      patch_set=s.ps, merged_patch_set=merged_ps,
                      merged_at=s.time if status == "MERGED" else None)


def marks(conn: sqlite3.Connection, registry: Registry) -> dict[tuple[int, str], tuple[int, int, str, int]]:
    index = {d.key: i for i, d in enumerate(ci_drivers(registry))}
    rows = conn.execute("""SELECT d.project_id, d.vendor, d.name, m.release, m.change_number, m.patch_set,
                                  m.result, m.comment_time
                           FROM driver_marks m JOIN drivers d ON d.id = m.driver_id""").fetchall()
    return {(index[(p, vd, n)], rel): (c, ps, res, t) for p, vd, n, rel, c, ps, res, t in rows}


def apply(store: Store, registry: Registry, items: list[Vote | State]) -> None:
    for item in items:
        if isinstance(item, Vote):
            store.commit(Batch("stream", [as_verification(item, registry)]))
        else:
            store.commit(Batch("stream", [], changes=[as_fact(item)]))


def status(store: Store) -> dict[int, str]:
    return dict(store.conn.execute("SELECT change_number, status FROM changes").fetchall())


# --------------------------------------------------------------------------------------------- scenarios



def test_vote_before_the_merge_and_after_it_both_count(store: Store, registry: Registry) -> None:
    apply(store, registry, [Vote(0, "Caracal", 1, 1, T, "a", "success"), State(1, "change-merged", 1, T + 50)])
    apply(store, registry, [State(2, "change-merged", 3, T + 60), Vote(1, "Caracal", 2, 3, T + 90, "a", "failure")])
    assert marks(store.conn, registry) == {(0, "Caracal"): (1, 1, "success", T),
                                           (1, "Caracal"): (2, 3, "failure", T + 90)}


def test_a_vote_on_a_patch_set_that_did_not_merge_never_counts(store: Store, registry: Registry) -> None:
    apply(store, registry, [
        Vote(0, "Caracal", 1, 1, T, "a", "success"),
        State(1, "patchset-created", 2, T + 10),
        Vote(0, "Caracal", 1, 2, T + 20, "a", "failure"),
        State(1, "change-merged", 2, T + 30),
        Vote(0, "Caracal", 1, 1, T + 40, "b", "success"),  # a late vote on the older patch set
    ])
    assert marks(store.conn, registry) == {(0, "Caracal"): (1, 2, "failure", T + 20)}


def test_open_abandoned_and_restored_changes_make_no_mark_until_merged(store: Store, registry: Registry) -> None:
    apply(store, registry, [Vote(0, "Epoxy", 7, 1, T, "a", "success"), State(7, "change-abandoned", 1, T + 5),
                            State(7, "change-restored", 1, T + 6)])
    assert marks(store.conn, registry) == {}
    assert status(store) == {7: "NEW"}
    apply(store, registry, [State(7, "change-merged", 1, T + 100)])
    assert marks(store.conn, registry) == {(0, "Epoxy"): (7, 1, "success", T)}
    assert status(store) == {7: "MERGED"}


def test_the_newest_merged_result_wins_whatever_arrives_last(store: Store, registry: Registry) -> None:
    apply(store, registry, [
        State(1, "change-merged", 1, T + 10), State(2, "change-merged", 1, T + 20),
        Vote(0, "Caracal", 2, 1, T + 200, "a", "failure"),
        Vote(0, "Caracal", 1, 1, T + 100, "a", "success"),  # older by comment time: arrives later, loses
        Vote(0, "", 1, 1, T + 300, "b", "success"),  # no release: no mark
    ])
    assert marks(store.conn, registry) == {(0, "Caracal"): (2, 1, "failure", T + 200)}


def test_equal_comment_times_are_decided_by_the_facts_not_by_arrival(tmp_path: Path, registry: Registry) -> None:
    facts: list[Vote | State] = [State(1, "change-merged", 1, T), State(2, "change-merged", 1, T),
                                 Vote(0, "Caracal", 2, 1, T + 9, "a", "success"),
                                 Vote(0, "Caracal", 1, 1, T + 9, "b", "failure")]
    seen = set()
    for i, order in enumerate((facts, facts[::-1], [facts[2], facts[0], facts[3], facts[1]])):
        with Store(tmp_path / f"{i}.sqlite") as s:
            s.sync_drivers(registry)
            apply(s, registry, order)
            seen.add(tuple(marks(s.conn, registry).items()))
    assert seen == {(((0, "Caracal"), (2, 1, "success", T + 9)),)}  # the higher change number


def test_marks_view_joins_driver_evidence_and_merge_time(store: Store, registry: Registry) -> None:
    apply(store, registry, [Vote(0, "Caracal", 1, 1, T, "a", "success"), State(1, "change-merged", 1, T + 50)])
    row = store.conn.execute("SELECT driver, vendor, release, result, evidence, comment_at, merged_at, change_number, "
                             "patch_set, removed FROM driverlog_marks").fetchone()
    assert row == (ci_drivers(registry)[0].name, ci_drivers(registry)[0].vendor, "Caracal", "success",
                   "- job : success", "2026-05-28 20:26:40", "2026-05-28 20:27:30", 1, 1, 0)


# --------------------------------------------------------------------------- property: any order, same marks

# Few values of each, so that equal comment times on different merged changes are common.
vote_strategy = st.builds(Vote, st.integers(0, 1), st.sampled_from(["Caracal", "Caracal", ""]), st.integers(1, 3),
                          st.integers(1, 2), st.integers(T, T + 1), st.sampled_from("ab"),
                          st.sampled_from(["success", "failure"]))


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Vote], list[State], list[Vote | State], list[int]]:
    votes = draw(st.lists(vote_strategy, max_size=25))
    # one row per natural key (driver, change, patch set, comment): a second copy of a comment is the same row
    unique: dict[tuple[int, int, int, str], Vote] = {}
    for v in votes:
        unique.setdefault((v.driver, v.change, v.ps, v.sha), v)
    votes = list(unique.values())
    states: list[State] = []
    for change in range(1, 4):
        merged_ps = draw(st.one_of(st.none(), st.integers(1, 2), st.integers(1, 2)))
        for kind in draw(st.lists(st.sampled_from(["patchset-created", "change-abandoned", "change-restored",
                                                   "comment-merged"]), max_size=3)):
            if kind == "comment-merged" and merged_ps is None:
                continue
            states.append(State(change, kind, draw(st.integers(1, 3)), draw(st.integers(T, T + 6))))
        if merged_ps is not None:  # learned from the stream, from a query row, or both
            for kind in draw(st.lists(st.sampled_from(["change-merged", "merged-row"]), min_size=1, max_size=2)):
                states.append(State(change, kind, merged_ps, draw(st.integers(T, T + 6))))
    items: list[Vote | State] = [*votes, *states]
    order = draw(st.permutations(items))
    cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=4)))
    return votes, states, list(order), cuts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(histories())
def test_any_order_and_batching_of_the_same_facts_gives_the_same_marks(
        tmp_path_factory: pytest.TempPathFactory, registry: Registry,
        history: tuple[list[Vote], list[State], list[Vote | State], list[int]]) -> None:
    votes, states, order, cuts = history
    with Store(tmp_path_factory.mktemp("p") / "d.sqlite") as s, \
            Store(tmp_path_factory.mktemp("p") / "one-by-one.sqlite") as one:
        s.sync_drivers(registry)
        bounds = [0, *cuts, len(order)]
        for a, b in itertools.pairwise(bounds):  # batches as the writer would commit them
            chunk = order[a:b]
            s.commit(Batch("backfill", [as_verification(v, registry) for v in chunk if isinstance(v, Vote)],
                           changes=[as_fact(x) for x in chunk if isinstance(x, State)]))
        assert marks(s.conn, registry) == reference_marks(votes, states)
        assert status(s) == reference_status(states)
        # A batch's facts are merged in Python first (ChangeRows), then by SQLite: the same rows as SQLite alone
        one.sync_drivers(registry)
        for item in order:
            one.commit(Batch("backfill", [as_verification(item, registry)]) if isinstance(item, Vote)
                       else Batch("backfill", changes=[as_fact(item)]))
        every_column = "SELECT * FROM changes ORDER BY change_number"
        assert s.conn.execute(every_column).fetchall() == one.conn.execute(every_column).fetchall()
        # Each mark's history, whatever the order and batching: the definition's, with the same ids
        assert transitions_in(s.conn, registry) == reference_history(votes, states)
        ids = "SELECT id FROM mark_transitions ORDER BY id"
        assert s.conn.execute(ids).fetchall() == one.conn.execute(ids).fetchall()
    # Rows merged per span (replay's workers), then across spans (its parent): the rows of all the facts at once
    across = ChangeRows()
    for a, b in itertools.pairwise(bounds):
        across.merge(ChangeRows(as_fact(x) for x in order[a:b] if isinstance(x, State)))
    assert across.rows == ChangeRows(as_fact(x) for x in order if isinstance(x, State)).rows


# ------------------------------------------------------------------------------------------------- the scanner


# ---------------------------------------------------------------------------------------- version 1 upgrade


# ------------------------------------------------------------------------ end to end: SSH, restart, backfill

BRANCH_RELEASE = {"stable/2024.1": "Caracal", "stable/2025.1": "Epoxy", "unmaintained/2023.1": "Antelope"}
JOB = {"Acme Volume Driver (FC)": "acme-cinder-fc", "Acme Volume Driver (iSCSI)": "acme-cinder-iscsi"}


def vote_event(driver: str, result: str, number: int, ps: int, branch: str, t: int) -> dict[str, Any]:
    text = f"Patch Set {ps}: Verified{'+1' if result == 'success' else '-1'}\n\nBuild done.\n\n" \
           f"- {JOB[driver]} https://ci.example.org/{number}/{ps} : {result.upper()} in 1h 2m"
    return comment_event(comment=text, number=number, patch_set=ps, branch=branch, created_on=t)


def test_marks_over_ssh_through_a_restart_with_merges_learned_only_by_backfill(ssh_env: Any, tmp_path: Path) -> None:

    t0 = int(time.time()) - 300
    fc, iscsi = "Acme Volume Driver (FC)", "Acme Volume Driver (iSCSI)"
    live: list[dict[str, Any]] = [
        vote_event(fc, "success", 501, 1, "stable/2024.1", t0),
        state_event("patchset-created", 501, 2, t=t0 + 1),
        vote_event(fc, "failure", 501, 2, "stable/2024.1", t0 + 2),  # the vote on the patch set that merges
        state_event("change-merged", 501, 2, t=t0 + 3),
        state_event("change-merged", 502, 1, t=t0 + 4),
        vote_event(fc, "success", 502, 1, "stable/2025.1", t0 + 5),  # a late vote, after the merge
        vote_event(fc, "failure", 503, 3, "stable/2025.1", t0 + 6),
        state_event("change-abandoned", 503, 3, t=t0 + 7),
        state_event("change-restored", 503, 3, t=t0 + 8),
        vote_event(iscsi, "success", 504, 1, "unmaintained/2023.1", t0 + 9),
    ]
    for ev in live[4:6]:
        ev["change"]["branch"] = "stable/2025.1"
    away: list[dict[str, Any]] = [  # while the daemon is stopped: only backfill can learn these
        state_event("change-merged", 503, 3, t=t0 + 20),
        vote_event(fc, "success", 505, 1, "stable/2024.1", t0 + 21),
        state_event("change-merged", 505, 1, t=t0 + 22),
        state_event("change-merged", 504, 1, t=t0 + 23),
        state_event("change-merged", 506, 2, t=t0 + 24),  # no CI comment on it yet: found as a merged change
    ]
    for ev in away[:1]:
        ev["change"]["branch"] = "stable/2025.1"
    away[3]["change"]["branch"] = "unmaintained/2023.1"

    def expected(events: list[dict[str, Any]]) -> set[tuple[str, str, int, int, str]]:
        """The marks, from what this test wrote (driver by job name, release by branch), by the definition."""
        merged = {e["change"]["number"]: e["patchSet"]["number"] for e in events if e["type"] == "change-merged"}
        best: dict[tuple[str, str], tuple[int, int, int, str]] = {}
        for e in events:
            if e["type"] != "comment-added" or merged.get(e["change"]["number"]) != e["patchSet"]["number"]:
                continue
            driver = next(d for d, job in JOB.items() if f"- {job} " in e["comment"])
            key = (driver, BRANCH_RELEASE[e["change"]["branch"]])
            cand = (e["eventCreatedOn"], e["change"]["number"], e["patchSet"]["number"],
                    "success" if ": SUCCESS" in e["comment"] else "failure")
            best[key] = max(best.get(key, cand), cand)
        return {(d, r, c, ps, res) for (d, r), (_, c, ps, res) in best.items()}

    def observed(db: Path) -> set[tuple[str, str, int, int, str]]:
        return set(query(db, "SELECT driver, release, change_number, patch_set, result FROM driverlog_marks"))

    first = Harness(ssh_env, tmp_path)
    with first:
        assert wait_until(first.settled)
        for ev in live:
            ssh_env.server.push_event(ev)
        assert wait_until(lambda: sum(first.metric("driverlog_events_total", {"type": k}) for k in
                                      {e["type"] for e in live}) >= len(live))
        assert wait_until(lambda: observed(first.db) == expected(live))
    assert expected(live) == {(fc, "Caracal", 501, 2, "failure"), (fc, "Epoxy", 502, 1, "success")}

    for ev in away:
        ssh_env.server.record_only(ev)
    second = Harness(ssh_env, tmp_path)  # the same database file: a restart
    with second:
        assert wait_until(lambda: second.settled() and second.service.backfiller.completed >= 1)
        assert observed(second.db) == expected(live + away) == {
            (fc, "Caracal", 505, 1, "success"), (fc, "Epoxy", 503, 3, "failure"),
            (iscsi, "Antelope", 504, 1, "success")}
        late = vote_event(fc, "failure", 506, 2, "stable/2024.1", t0 + 30)  # the CI's late vote, live
        ssh_env.server.push_event(late)
        assert wait_until(lambda: observed(second.db) == expected(live + away + [late]))
        assert (fc, "Caracal", 506, 2, "failure") in observed(second.db)
        states = dict(query(second.db, "SELECT change_number, status FROM changes"))
        assert states == {n: "MERGED" for n in range(501, 507)}
