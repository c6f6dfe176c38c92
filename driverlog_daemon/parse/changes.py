"""Change facts merged by change number: the state of a change, before (and the same as) SQLite's upsert.

A change's many events (patch sets, votes, merge, abandon, restore) become one row; facts merge
order-independently, so merging here first (a block, a replay span, a backfill) and then in SQLite ends as if
SQLite had merged each fact. ``store`` writes these rows; nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Iterable

from driverlog_daemon.model import ChangeFact

#: A ``changes`` row as the upsert takes it: (change_number, project, branch, status, status_time,
#: current_patch_set, merged_patch_set, merged_time, last_update_time).
ChangeRow = tuple[int, str, str, str | None, int, int | None, int | None, int | None, int]


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def merge_change_rows(old: ChangeRow, new: ChangeRow) -> ChangeRow:
    """The upsert's rules (``store._UPSERT_CHANGES_TAIL``) in Python: what the row ``old`` becomes when ``new`` arrives.

    Like them, order-independent, so that facts merged here first and then by SQLite end as if SQLite had
    merged each (the property test in test_marks.py compares the two).
    """
    n, project, branch, status, status_time, ps, merged_ps, merged_time, updated = old
    _, _, _, x_status, x_status_time, x_ps, x_merged_ps, x_merged_time, x_updated = new
    if x_status is not None and status != "MERGED" and (
            x_status == "MERGED" or status is None
            or (x_status_time, x_status == "ABANDONED") > (status_time, status == "ABANDONED")):
        status = x_status
    if x_status is not None:
        status_time = max(status_time, x_status_time)
    return (n, project, branch, status, status_time, _max(ps, x_ps),
            merged_ps if merged_ps is not None else x_merged_ps, _min(merged_time, x_merged_time),
            max(updated, x_updated))


class ChangeRows:
    """Change facts merged by change number before they are written: one row a change, however many facts
    (replay keeps merging across its batches, so SQLite sees each change once per batch at most)."""

    __slots__ = ("rows",)

    def __init__(self, facts: Iterable[ChangeFact] = ()) -> None:
        self.rows: dict[int, ChangeRow] = {}
        self.add(facts)

    def add(self, facts: Iterable[ChangeFact]) -> None:
        rows = self.rows
        for n, p, b, s, t, ps, mps, mt in facts:
            row = (n, p, b, s, 0 if s is None else t, ps, mps, mt, t)  # no status said: any later one wins
            old = rows.get(n)
            rows[n] = row if old is None else merge_change_rows(old, row)

    def add_one(self, fact: ChangeFact) -> None:
        n, p, b, s, t, ps, mps, mt = fact
        row = (n, p, b, s, 0 if s is None else t, ps, mps, mt, t)
        old = self.rows.get(n)
        self.rows[n] = row if old is None else merge_change_rows(old, row)

    def merge(self, other: ChangeRows) -> None:
        """Add rows merged elsewhere (a replay worker's span): dict operations in C but for the changes in both."""
        rows, new = self.rows, other.rows
        both = rows.keys() & new.keys()
        merged = {n: merge_change_rows(rows[n], new[n]) for n in both}
        rows.update(new)
        rows.update(merged)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[int, ChangeRow]:
        return self.rows

    def __setstate__(self, rows: dict[int, ChangeRow]) -> None:
        self.rows = rows
