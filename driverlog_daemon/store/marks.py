"""DriverLog's mark and its history, on the writer's connection: the candidates, the mark, the transitions and the
webhook deliveries they queue, in the transaction of the batch that caused them (docs/health.md).

A verification is a *candidate* once its change has merged at its patch set (and its release is known); the mark of
a driver x release is its best candidate; the writer recomputes a pair's history from the earliest effective time
a batch changed (``marks_dirty``), so that ``mark_transitions`` always equals :func:`ci_health.transitions` over the
data, late data included. The candidates' SQL is written here once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from driverlog_daemon.store import ci_health, outbox
from driverlog_daemon.store.ci_health import Candidate
from driverlog_daemon.store.schema import values_statements

if TYPE_CHECKING:
    from driverlog_daemon.config import WebhookConfig

# A Candidate's columns, of the table named {t}
_CANDIDATE_COLUMNS = ", ".join("{t}." + c for c in Candidate._fields)

#: The verifications ``v`` selected by ``{where}`` that can make a mark, made candidates (join: their merged change).
CANDIDATES = """
    INSERT INTO mark_candidates (verification_id, driver_id, release, effective_time, comment_time, result,
                                 change_number, patch_set, comment_sha256)
    SELECT v.id, v.driver_id, v.release, max(v.comment_time, coalesce(c.merged_time, v.comment_time)),
           v.comment_time, v.result, v.change_number, v.patch_set, v.comment_sha256
    FROM {source}
    WHERE v.release != '' AND {where}
    ON CONFLICT (verification_id) DO NOTHING"""
_JOINED = "verifications v JOIN changes c ON c.change_number = v.change_number AND c.merged_patch_set = v.patch_set"

# What a batch's new verifications (row id >= ?) add beyond their rows, once per batch rather than a trigger per row:
# their day counts; their candidacy for a mark when their change has merged at their patch set; and the pairs whose
# mark history must be computed again.
FOR_NEW_VERIFICATIONS = (
    """INSERT INTO driver_days (driver_id, day, runs, passes)
       SELECT driver_id, comment_time / 86400, count(*), sum(result = 'success') FROM verifications WHERE id >= ?
       GROUP BY driver_id, comment_time / 86400
       ON CONFLICT (driver_id, day) DO UPDATE SET runs = runs + excluded.runs, passes = passes + excluded.passes""",
    CANDIDATES.format(source=_JOINED, where="v.id >= ?1"),
    """INSERT INTO marks_dirty (driver_id, release, since)
       SELECT driver_id, release, min(effective_time) FROM mark_candidates WHERE verification_id >= ?
       GROUP BY driver_id, release
       ON CONFLICT (driver_id, release) DO UPDATE SET since = min(since, excluded.since)""",
)

_DIRTY = """INSERT INTO marks_dirty (driver_id, release, since) VALUES (?, ?, ?)
            ON CONFLICT (driver_id, release) DO UPDATE SET since = min(since, excluded.since)"""


def candidates_of_driver(conn: sqlite3.Connection, driver_id: int) -> None:
    """Every candidate of one driver (its verifications just made again)."""
    conn.execute(CANDIDATES.format(source=_JOINED, where="v.driver_id = ?1"), (driver_id,))


def merged_candidates(conn: sqlite3.Connection, numbers: str) -> None:
    """The verifications at the merged patch set of these changes (a batch's merged ones new to the file; a known
    change's merge is the update trigger's) become candidates, and their pairs' history is due from them.
    ``numbers``: a JSON array (SQLite reads it as it is: no list of them is held here).

    Most merged changes have no verification: each costs one probe of the verifications index, in that order
    (CROSS JOIN), rather than a change lookup first."""
    made = conn.execute(
        CANDIDATES.format(source="json_each(?) m CROSS JOIN verifications v ON v.change_number = m.value "
                                 "CROSS JOIN changes c ON c.change_number = v.change_number "
                                 "AND c.merged_patch_set = v.patch_set", where="true")
        + " RETURNING driver_id, release, effective_time", (numbers,))
    since: dict[tuple[int, str], int] = {}
    for driver_id, release, effective_time in made:
        pair = (driver_id, release)
        since[pair] = min(since.get(pair, effective_time), effective_time)
    conn.executemany(_DIRTY, [(d, r, t) for (d, r), t in since.items()])


_UPSERT_MARK = """
    INSERT INTO driver_marks (driver_id, release, verification_id, result, comment_time, change_number, patch_set,
                              comment_sha256)"""
_UPSERT_MARK_TAIL = """
    ON CONFLICT (driver_id, release) DO UPDATE SET
        verification_id = excluded.verification_id, result = excluded.result, comment_time = excluded.comment_time,
        change_number = excluded.change_number, patch_set = excluded.patch_set, comment_sha256 = excluded.comment_sha256
    WHERE (excluded.comment_time, excluded.change_number, excluded.patch_set, excluded.comment_sha256)
        > (driver_marks.comment_time, driver_marks.change_number, driver_marks.patch_set,
           driver_marks.comment_sha256)"""
_TRANSITION_COLUMNS = ", ".join(ci_health.Transition._fields)


def update_transitions(conn: sqlite3.Connection, *, hooks: Sequence[WebhookConfig],
                       keys: Mapping[int, tuple[str, str, str]], now: float, context: str | None = None,
                       news_since: int | None = None) -> int:
    """The mark history of every pair the batch touched (``marks_dirty``, from the earliest effective time that
    changed), so that ``mark_transitions`` equals the definition over the data; returns how many transitions are
    new. ``context``: None (the data caused them: a verification or a merge, news), ``registry`` (a registry
    change: news, with that cause) or ``import`` (the first start's import: what happened before the daemon
    started, its transitions before ``news_since`` in Gerrit's clock, is history — recorded, not sent; None:
    all of it is history). Retractions go to the hooks their transition went to, in any context.

    A few statements for all the pairs at once, not a few per pair (a batch touches hundreds of pairs); the
    candidates are read pair after pair, never all held at once, each pair's as one row (a JSON array): every
    row a cursor yields hands the GIL over, which beside replay's scanning thread costs far more than the row.
    The best candidate before ``since`` is usually the pair's mark itself (the best of the candidates there were,
    all earlier than ``since`` when the data comes in time order): only when it is not are the earlier
    candidates searched."""
    dirty = conn.execute("SELECT driver_id, release, since FROM marks_dirty").fetchall()
    if not dirty:
        return 0
    before = {(driver_id, release): Candidate(*candidate) for driver_id, release, *candidate in conn.execute(
        f"""SELECT d.driver_id, d.release, {_CANDIDATE_COLUMNS.format(t="m")}
            FROM marks_dirty d LEFT JOIN driver_marks k ON k.driver_id = d.driver_id AND k.release = d.release
            JOIN mark_candidates m ON m.verification_id = CASE
                WHEN (SELECT effective_time FROM mark_candidates WHERE verification_id = k.verification_id)
                     < d.since THEN k.verification_id
                ELSE (SELECT verification_id FROM mark_candidates
                      WHERE driver_id = d.driver_id AND release = d.release AND effective_time < d.since
                      ORDER BY comment_time DESC, change_number DESC, patch_set DESC, comment_sha256 DESC
                      LIMIT 1) END""")}
    present = {(driver_id, release): set(json.loads(ids)) for driver_id, release, ids in conn.execute(
        """SELECT d.driver_id, d.release, json_group_array(t.id) FROM marks_dirty d JOIN mark_transitions t
           ON t.driver_id = d.driver_id AND t.release = d.release AND t.at >= d.since
           GROUP BY d.driver_id, d.release""")}
    marks: list[tuple[Any, ...]] = []
    gone: list[str] = []
    new: list[ci_health.Transition] = []

    def history(pair: tuple[int, str], since_then: list[Candidate]) -> None:
        earlier = before.get(pair)
        wanted = {t.id: t for t in ci_health.transitions(*pair, since_then, earlier)}
        best = max((c for c in (earlier, *since_then) if c is not None), key=lambda c: c.rank, default=None)
        if best is not None:  # today's mark: the best of every candidate (all are eligible now)
            marks.append((*pair, best.verification_id, best.result, best.comment_time, best.change_number,
                          best.patch_set, best.comment_sha256))
        had = present.get(pair, set())
        gone.extend(had - wanted.keys())
        new.extend(sorted((wanted[i] for i in wanted.keys() - had), key=lambda t: (t.at, t.id)))

    later = conn.execute(
        f"""SELECT d.driver_id, d.release, json_group_array(json_array({_CANDIDATE_COLUMNS.format(t="m")}))
            FROM marks_dirty d JOIN mark_candidates m
                 ON m.driver_id = d.driver_id AND m.release = d.release AND m.effective_time >= d.since
            GROUP BY d.driver_id, d.release""")
    seen = set()
    for driver_id, release, candidates in later:
        seen.add((driver_id, release))
        history((driver_id, release), sorted(map(Candidate._make, json.loads(candidates))))
    for driver_id, release, _ in dirty:
        if (driver_id, release) not in seen:  # no candidate since: only what came before
            history((driver_id, release), [])
    if context == "registry":
        new = [t._replace(cause="registry") for t in new]
    elif context == "import":
        new = [t._replace(cause="import") if news_since is None or t.at < news_since else t for t in new]
    # multi-row statements, not executemany: one GIL hand-over a statement, not one a row
    for sql, values in values_statements(_UPSERT_MARK, _UPSERT_MARK_TAIL, 8, marks):
        conn.execute(sql, values)
    if gone and hooks:  # before they go: a retraction carries the transition it withdraws (news in any case)
        withdrawn = [ci_health.Transition._make(row) for row in conn.execute(
            f"SELECT {_TRANSITION_COLUMNS} FROM mark_transitions WHERE id IN ({', '.join('?' * len(gone))})",
            sorted(gone))]
        outbox.queue(conn, "retraction", withdrawn, hooks, keys, now)
    if gone:
        conn.executemany("DELETE FROM mark_transitions WHERE id = ?", [(i,) for i in gone])
    for sql, values in values_statements(f"INSERT INTO mark_transitions ({_TRANSITION_COLUMNS})", "",
                                         len(ci_health.Transition._fields), new):
        conn.execute(sql, values)
    news = [t for t in new if t.cause != "import"]
    if news and hooks:
        outbox.queue(conn, "transition", news, hooks, keys, now)
    conn.execute("DELETE FROM marks_dirty")
    return len(new)
