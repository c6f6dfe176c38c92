from __future__ import annotations

from typing import Any

import pytest

from driverlog_daemon.model import ChangeFact, CommentAdded
from driverlog_daemon.parse.events import Malformed, OtherEvent, parse_line
from driverlog_daemon.testing.events import PROJECT, T, comment_event, line, other_event, state_event


def test_comment_added_becomes_a_typed_event() -> None:
    ev = parse_line(line(comment_event()))
    assert isinstance(ev, CommentAdded)
    assert ev.author.username == "acme-storage-ci" and ev.author.email == "acme-storage-ci@ci.example.org"
    assert (ev.change.project, ev.change.branch, ev.change.number, ev.change.status) == (
        "openstack/cinder", "master", 873412, "NEW")
    assert ev.change.url == "https://review.example.org/c/openstack/cinder/+/873412"
    assert ev.patch_set == 3 and ev.created_on == 1_750_000_000
    assert ev.approvals[0].type == "Verified" and ev.approvals[0].value == "1" and ev.approvals[0].old_value == "0"


def test_old_server_strings_and_missing_optional_fields() -> None:
    raw = (b'{"type":"comment-added","change":{"project":"openstack/cinder","branch":"master","number":"873412"},'
           b'"patchSet":{"number":"3"},"author":{"username":"acme-storage-ci"},"comment":"Build succeeded.",'
           b'"eventCreatedOn":1718901234,"someFutureField":{"x":1}}\n')
    ev = parse_line(raw)
    assert isinstance(ev, CommentAdded)
    assert (ev.change.number, ev.patch_set, ev.change.url, ev.author.email, ev.approvals) == (873412, 3, None, None, ())


def test_unknown_and_other_types_are_recognised_with_their_time() -> None:
    assert parse_line(line(other_event("ref-replicated", 42))) == OtherEvent("ref-replicated", 42)
    assert parse_line(b'{"type":"dropped-output"}') == OtherEvent("dropped-output", None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"type":"comment-added", "x": "\xff"}', "invalid_utf8"),
        (b'{"type":"comment-added",', "invalid_json"),
        (b"[1, 2]", "not_object"),
        (b'"just a string"', "not_object"),
        (b'{"eventCreatedOn": 1}', "missing_field:type"),
        (b'{"type": 7}', "invalid_field:type"),
    ],
)
def test_malformed_lines_get_a_reason(raw: bytes, reason: str) -> None:
    bad = parse_line(raw)
    assert isinstance(bad, Malformed) and bad.reason == reason
    assert bad.excerpt


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e["author"].pop("username"), "missing_field:author.username"),
        (lambda e: e.pop("author"), "missing_field:author"),
        (lambda e: e.update(author="acme"), "invalid_field:author"),
        (lambda e: e["change"].pop("project"), "missing_field:change.project"),
        (lambda e: e["change"].pop("branch"), "missing_field:change.branch"),
        (lambda e: e["change"].update(number="12a"), "invalid_field:change.number"),
        (lambda e: e["change"].update(number=True), "invalid_field:change.number"),
        (lambda e: e["patchSet"].pop("number"), "missing_field:patchSet.number"),
        (lambda e: e.pop("patchSet"), "missing_field:patchSet.number"),
        (lambda e: e.pop("eventCreatedOn"), "missing_field:eventCreatedOn"),
        (lambda e: e.update(comment=["x"]), "invalid_field:comment"),
    ],
)
def test_comment_added_missing_what_it_needs(mutate: Any, reason: str) -> None:
    ev = comment_event()
    mutate(ev)
    bad = parse_line(line(ev))
    assert isinstance(bad, Malformed) and bad.reason == reason


def test_a_merge_fact_from_parse_line() -> None:
    event = parse_line(line(state_event("change-merged", 10, 4, t=T + 5)))
    assert getattr(event, "fact", None) == ChangeFact(
        number=10, project=PROJECT, branch="stable/2024.1", status="MERGED", time=T + 5, patch_set=4,
        merged_patch_set=4, merged_at=T + 5)
