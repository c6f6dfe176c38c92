"""What a proposed registry would do to the marks the file holds, read-only (``registry diff --database``).

For each CI binding the proposal gives another meaning (:func:`registry.changes.compare`), the comments the file
keeps of its CI account are judged under the proposal, as the daemon would judge them on applying it
(:mod:`store.rejudge`): a verification whose comment is not kept keeps its verdict, mapped to the proposal's
releases. The mark of each release is then DriverLog's (the newest candidate on the patch set that merged,
:class:`ci_health.Candidate`'s rank), compared with the mark the file holds now. A removed binding's marks go.
Nothing is written: the connection may be ``mode=ro``.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

from driverlog_daemon.match.kept import RESTORE_COLUMNS, restore
from driverlog_daemon.match.rules import match_comment, release_for
from driverlog_daemon.model import Verification
from driverlog_daemon.registry.changes import RegistryChanges
from driverlog_daemon.registry.load import Driver, Registry

Key = tuple[str, str, str]


class MarkChange(NamedTuple):
    key: Key
    release: str
    before: str | None  # the mark's result now (None: no mark)
    after: str | None  # under the proposal

    @property
    def kind(self) -> str:
        return "appears" if self.before is None else "vanishes" if self.after is None else "changes"


class Judged(NamedTuple):
    """How one changed binding's kept comments are judged: now (the file's verifications) and under the proposal."""

    key: Key
    comments: int  # kept comments of its CI account on its review project (under the proposal)
    now: Counter[str]  # verifications the file holds: success, failure
    proposed: Counter[str]  # success, failure, none (no verdict)


class Preview(NamedTuple):
    marks: tuple[MarkChange, ...]
    judged: tuple[Judged, ...]


def _current_marks(conn: sqlite3.Connection, driver_id: int | None) -> dict[str, str]:
    if driver_id is None:
        return {}
    return dict(conn.execute("SELECT release, result FROM driver_marks WHERE driver_id = ?", (driver_id,)))


def _driver_id(conn: sqlite3.Connection, key: Key) -> int | None:
    row = conn.execute("SELECT id FROM drivers WHERE project_id = ? AND vendor = ? AND name = ?", key).fetchone()
    return None if row is None else int(row[0])


def kept_judgements(conn: sqlite3.Connection, driver: Driver,
                    registry: Registry) -> Iterator[tuple[list[Verification], str]]:
    """Each kept comment of the driver's CI account on its review project, judged for this driver alone under
    ``registry``: (its verifications, none or one; the source that delivered it). What a registry change judges
    again (:mod:`store.rejudge`) and what the preview counts."""
    assert driver.ci is not None
    columns = ", ".join(RESTORE_COLUMNS)
    for *row, sha, source in conn.execute(f"SELECT {columns}, comment_sha256, source FROM ci_comments "
                                          "WHERE ci_account = ? AND project = ?",
                                          (driver.ci.account, driver.review_project)):
        yield match_comment(restore(row), registry, sha256=sha, only=driver.key).verifications, source


def _proposed(conn: sqlite3.Connection, key: Key, driver_id: int | None,
              registry: Registry) -> tuple[dict[str, str], Judged]:
    driver = next(d for d in registry.drivers if d.key == key)
    assert driver.ci is not None
    merged = dict(conn.execute(
        "SELECT change_number, merged_patch_set FROM changes WHERE project = ? AND merged_patch_set IS NOT NULL",
        (driver.review_project,)))
    best: dict[str, tuple[tuple[int, int, int, str], str]] = {}

    def offer(release: str, rank: tuple[int, int, int, str], result: str) -> None:
        if release and merged.get(rank[1]) == rank[2] and (release not in best or rank > best[release][0]):
            best[release] = (rank, result)

    proposed: Counter[str] = Counter()
    comments = 0
    for found, _ in kept_judgements(conn, driver, registry):
        comments += 1
        proposed[found[0].result if found else "none"] += 1
        for v in found:
            offer(v.release, (v.comment_time, v.change_number, v.patch_set, v.comment_sha256), v.result)
    now: Counter[str] = Counter()
    if driver_id is not None:
        now.update(dict(conn.execute("SELECT result, count(*) FROM verifications WHERE driver_id = ? "
                                     "GROUP BY result", (driver_id,))))
        for when, number, ps, sha, result, branch in conn.execute(  # verdicts whose comment is not kept stay
                """SELECT v.comment_time, v.change_number, v.patch_set, v.comment_sha256, v.result, v.branch
                   FROM verifications v WHERE v.driver_id = ? AND NOT EXISTS (
                       SELECT 1 FROM ci_comments k WHERE (k.ci_account, k.change_number, k.patch_set,
                           k.comment_sha256) = (v.ci_account, v.change_number, v.patch_set, v.comment_sha256))""",
                (driver_id,)):
            offer(release_for(branch, when, registry), (when, number, ps, sha), result)
    return {r: result for r, (_, result) in best.items()}, Judged(key, comments, now, proposed)


def preview(conn: sqlite3.Connection, changes: RegistryChanges, proposal: Registry) -> Preview:
    """The marks that would appear, change or vanish, and how each changed binding's comments would be judged."""
    marks: list[MarkChange] = []
    judged: list[Judged] = []
    order = {r.id: i for i, r in enumerate(proposal.releases)}

    def in_order(releases: set[str]) -> list[str]:
        return sorted(releases, key=lambda r: (order.get(r, len(order)), r))

    for binding in changes.bindings:
        driver_id = _driver_id(conn, binding.key)
        before = _current_marks(conn, driver_id)
        after, counts = _proposed(conn, binding.key, driver_id, proposal)
        judged.append(counts)
        marks += [MarkChange(binding.key, r, before.get(r), after.get(r))
                  for r in in_order(before.keys() | after.keys()) if before.get(r) != after.get(r)]
    for key in changes.removed:
        held = _current_marks(conn, _driver_id(conn, key))
        marks += [MarkChange(key, r, held[r], None) for r in in_order(set(held))]
    return Preview(tuple(marks), tuple(judged))


def lines(p: Preview) -> list[str]:
    """One line a mark that would move, then one a binding judged again, each naming its driver."""
    out = []
    for m in p.marks:
        name = "/".join(m.key)
        if m.kind == "appears":
            out.append(f"+ mark {name} {m.release}: {m.after}")
        elif m.kind == "vanishes":
            out.append(f"- mark {name} {m.release}: was {m.before}")
        else:
            out.append(f"~ mark {name} {m.release}: {m.before} -> {m.after}")
    for j in p.judged:
        out.append(f"  judged {'/'.join(j.key)}: {j.comments} kept comments would give {j.proposed['success']} "
                   f"success, {j.proposed['failure']} failure, {j.proposed['none']} no verdict (the file holds "
                   f"{j.now['success']} success, {j.now['failure']} failure)")
    return out


def as_json(p: Preview) -> dict[str, Any]:
    def driver(key: Key) -> dict[str, str]:
        return {"project_id": key[0], "vendor": key[1], "name": key[2]}

    return {"marks": [{**driver(m.key), "release": m.release.lower(), "change": m.kind, "from": m.before,
                       "to": m.after} for m in p.marks],
            "judged": [{**driver(j.key), "comments": j.comments,
                        "proposed": {k: j.proposed[k] for k in ("success", "failure", "none")},
                        "now": {k: j.now[k] for k in ("success", "failure")}} for j in p.judged]}
