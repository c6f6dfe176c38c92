"""Scan: the cheap pre-check over blocks of lines, and its property tests against decoding every line."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from driverlog_daemon.match.rules import match_comment
from driverlog_daemon.model import ChangeFact, CommentAdded
from driverlog_daemon.parse import events
from driverlog_daemon.parse.changes import ChangeRows
from driverlog_daemon.parse.events import Malformed, parse_line
from driverlog_daemon.parse.scanner import Scanner
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.testing.events import PROJECT, comment_event, line, other_event, state_event


def test_scanner_fast_path_counts_types_and_finds_ci_comments(registry: Registry) -> None:
    block = b"".join([
        line(other_event("patchset-created", 100)),
        line(comment_event(author="jdev", created_on=101)),
        line(comment_event(author="acme-storage-ci", created_on=103)),
        line(other_event("ref-replicated", 102)),
    ])
    scan = Scanner(registry.ci_accounts).scan(block)
    assert scan.lines == 4
    assert scan.by_type == {"patchset-created": 1, "comment-added": 2, "ref-replicated": 1}
    assert scan.newest_event_time == 103
    assert [c.author.username for c in scan.comments] == ["acme-storage-ci"]
    assert scan.malformed == []


def test_scanner_slow_path_for_other_formats_and_garbage(registry: Registry) -> None:
    spaced = json.dumps(comment_event(author="initech-ci", created_on=200)).encode() + b"\n"
    block = b"".join([
        spaced,
        b"\n",  # blank lines are skipped, not counted
        b'{"type":"dropped-output"}\n',
        b"not json at all\n",
        b'{"type":"comment-added","author":{"username":"initech-ci"}}\n',  # a CI line lacking what it needs
        line(other_event("change-merged", 150)),
    ])
    scan = Scanner(registry.ci_accounts).scan(block)
    assert scan.lines == 5
    assert scan.by_type == {"comment-added": 1, "dropped-output": 1, "change-merged": 1}
    assert scan.dropped_output == 1
    assert sorted(m.reason for m in scan.malformed) == ["invalid_json", "missing_field:change"]
    assert [c.created_on for c in scan.comments] == [200]
    assert scan.newest_event_time == 200


def test_malformed_candidate_is_not_counted_by_type(registry: Registry) -> None:
    bad = b'{"author":{"username":"acme-storage-ci"},"type":"comment-added","eventCreatedOn":5}\n'
    scan = Scanner(registry.ci_accounts).scan(bad + line(other_event("patchset-created", 6)))
    assert scan.by_type == {"comment-added": 0, "patchset-created": 1}
    assert [m.reason for m in scan.malformed] == ["missing_field:change"]


def test_escaped_username_is_still_found(registry: Registry) -> None:
    text = line(comment_event(author="acme-storage-ci")).replace(b'"username":"acme-storage-ci"',
                                                                 b'"username":"acme\\u002dstorage-ci"')
    assert [c.author.username for c in Scanner(registry.ci_accounts).scan(text).comments] == ["acme-storage-ci"]


ACCOUNTS = ["acme-storage-ci", "initech-ci", "ü-ci", "a.b_c", "x"]


CI_LIKE = [*ACCOUNTS, "acme-storage-ci2", "Acme-storage-ci", "jdev", "initech", "acme-storage"]


def direct_results(raw_lines: list[bytes], registry: Registry) -> list[tuple[Any, ...]]:
    """The rules applied the obvious way: decode every line, every driver, every line of the comment."""
    out = []
    for raw in raw_lines:
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(ev, dict) or ev.get("type") != "comment-added":
            continue
        author = ev.get("author", {}).get("username")
        for d in registry.drivers:
            if d.ci is None or d.ci.account != author or ev["change"]["project"] != d.review_project:
                continue
            body = re.sub(r"^Patch Set \d+:", "", ev["comment"]).strip()
            for text in body.split("\n"):
                if not text.strip():
                    continue
                if re.search(d.ci.success_pattern, text):
                    out.append((d.key, int(ev["change"]["number"]), "success", text))
                    break
                if re.search(d.ci.failure_pattern, text):
                    out.append((d.key, int(ev["change"]["number"]), "failure", text))
                    break
    return sorted(out)


def property_registry() -> Registry:
    from driverlog_daemon.registry.load import parse_registry

    drivers = [
        {"project_id": "openstack/cinder", "vendor": "V", "name": f"D-{a}",
         "ci": {"id": a, "success_pattern": r"job-" + re.escape(a) + r" \S+ : SUCCESS", "failure_pattern": "FAILURE"}}
        for a in ACCOUNTS
    ]
    return parse_registry(json.dumps({"projects": [{"id": "openstack/cinder", "name": "c"}], "releases": [],
                                      "drivers": drivers}))


PROPERTY_REGISTRY = property_registry()


def render(spec: tuple[Any, ...]) -> list[bytes]:
    author, owner, text, result, fmt, number, extra, t = spec
    comment = f"Patch Set 2: Verified+1\n\n{text}\n- job-{author} http://x : {result} in 3m"
    ev = comment_event(author=author, comment=comment, number=number, created_on=t)
    ev["change"]["owner"]["username"] = owner
    if fmt == "compact":
        raw = json.dumps(ev, separators=(",", ":"), ensure_ascii=False)
    elif fmt == "spaced":
        raw = json.dumps(ev, ensure_ascii=False)
    elif fmt == "ascii":
        raw = json.dumps(ev, separators=(",", ":"), ensure_ascii=True)
    else:
        items = list(ev.items())
        random.Random(t).shuffle(items)
        raw = json.dumps(dict(items), separators=(",", ":"))
    out = [raw.encode("utf-8") + b"\n"]
    if extra == "garbage":
        out.append(b"{\"type\":\"comment-added\",\"author\n")
    elif extra == "dropped-output":
        out.append(b'{"type":"dropped-output"}\n')
    elif extra:
        out.append(line(other_event(extra, t)))
    return out


event_strategy = st.builds(
    lambda author, owner, text, result, fmt, number, extra, t: (author, owner, text, result, fmt, number, extra, t),
    st.sampled_from(CI_LIKE), st.sampled_from(CI_LIKE), st.text(max_size=40),
    st.sampled_from(["SUCCESS", "FAILURE", "NOT_REGISTERED"]),
    st.sampled_from(["compact", "spaced", "ascii", "indent-free-reordered"]),
    st.one_of(st.integers(1, 10**6), st.integers(1, 10**6).map(str)),
    st.sampled_from([None, "patchset-created", "ref-updated", "garbage", "dropped-output"]),
    st.integers(1_000_000_000, 2_000_000_000),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_strategy, min_size=1, max_size=12))
def test_precheck_never_drops_a_matching_line(specs: list[tuple[Any, ...]]) -> None:
    raw_lines = [x for spec in specs for x in render(spec)]
    block = b"".join(raw_lines)
    scan = Scanner(PROPERTY_REGISTRY.ci_accounts).scan(block)
    ours = sorted(
        (v.driver_key, v.change_number, v.result, v.evidence)
        for c in scan.comments for v in match_comment(c, PROPERTY_REGISTRY).verifications
    )
    assert ours == direct_results(raw_lines, PROPERTY_REGISTRY)
    assert scan.lines == len(raw_lines)


_ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=5), st.just([]), st.just({}))


_APPROVAL = st.one_of(
    st.fixed_dictionaries({"type": st.text(max_size=4), "value": st.one_of(st.text(max_size=2), _ODD_VALUES)},
                          optional={"description": st.one_of(st.text(max_size=4), _ODD_VALUES),
                                    "oldValue": st.one_of(st.text(max_size=2), _ODD_VALUES)}),
    st.dictionaries(st.sampled_from(["type", "value", "description", "oldValue"]), _ODD_VALUES, max_size=4),
    _ODD_VALUES)


_AS_GERRIT_WRITES = {
    "name": st.text(max_size=8), "email": st.text(max_size=8),
    "username": st.sampled_from(ACCOUNTS),  # a CI account: the line is a candidate, read by the typed decoder
    "number": st.integers(0, 10**7), "patch_set": st.integers(0, 99), "id": st.text(max_size=8),
    "url": st.text(max_size=8), "status": st.sampled_from(["NEW", "MERGED"]), "project": st.just("openstack/cinder"),
    "branch": st.just("master"), "comment": st.text(max_size=30), "approvals": st.lists(_APPROVAL, max_size=3),
}


def _shaped_comment_line(shape: dict[str, Any]) -> bytes:
    ev = comment_event(author=shape["username"])
    for obj, key, field in ((ev["author"], "name", "name"), (ev["author"], "email", "email"),
                            (ev["author"], "username", "username"), (ev["change"], "number", "number"),
                            (ev["patchSet"], "number", "patch_set"), (ev["change"], "id", "id"),
                            (ev["change"], "url", "url"), (ev["change"], "status", "status"),
                            (ev["change"], "project", "project"), (ev["change"], "branch", "branch"),
                            (ev, "comment", "comment"), (ev, "approvals", "approvals")):
        value = shape[field]
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _shape(**odd: Any) -> dict[str, Any]:
    normal = {"name": "n", "email": "e", "username": "x", "number": 1, "patch_set": 1, "id": "I1", "url": "u",
              "status": "NEW", "project": "openstack/cinder", "branch": "master", "comment": "c",
              "approvals": [{"type": "Verified", "value": "1", "description": "d", "oldValue": "0"}]}
    return {**normal, **odd}


# Each line as Gerrit writes it but for up to three fields: odd values (wrong types, negatives) or left out (...).
comment_shape = st.builds(
    lambda normal, odd: {**normal, **odd}, st.fixed_dictionaries(_AS_GERRIT_WRITES),
    st.dictionaries(st.sampled_from(sorted(set(_AS_GERRIT_WRITES) - {"username"})),
                    st.one_of(_ODD_VALUES, st.just(...)), max_size=3))


@settings(max_examples=400, deadline=None)
@given(comment_shape)
@example(_shape(number=-1))
@example(_shape(patch_set=-1))
@example(_shape(status=7, name=True, email=[], id={}, url=0))
@example(_shape(approvals=[{"type": "Verified", "value": 1}, {"type": "V", "value": "1", "description": 2,
                                                              "oldValue": False}]))
def test_the_typed_reading_of_a_ci_comment_equals_the_full_decode(shape: dict[str, Any]) -> None:
    raw = _shaped_comment_line(shape)
    full = parse_line(raw)
    # Both readings share the common shape's checks (events._common_comment); the per-field checks of a decoded
    # object, applied alone, are the reference for them.
    try:
        checked: CommentAdded | str = events._comment_added_checked(json.loads(raw))
    except events._Missing as missing:
        checked = missing.reason
    assert (full.reason if isinstance(full, Malformed) else full) == checked
    scan = Scanner(ACCOUNTS).scan(raw + b"\n")
    if isinstance(full, Malformed):
        assert scan.comments == [] and [m.reason for m in scan.malformed] == [full.reason]
        assert scan.by_type["comment-added"] == 0
    else:
        assert isinstance(full, CommentAdded)
        assert scan.comments == ([full] if full.author.username in ACCOUNTS else [])
        assert scan.malformed == [] and scan.by_type["comment-added"] == 1


def test_scanner_reads_state_events_of_review_projects_only(registry: Registry) -> None:
    scanner = Scanner(registry.ci_accounts, registry.review_projects)
    block = b"".join([
        line(state_event("change-merged", 10, 4)),
        line(state_event("patchset-created", 11, 2, project="openstack/horizon")),  # not a review project
        line(state_event("change-abandoned", 12, 1, project="x/networking-globex")),  # a driver's repo
        line(state_event("change-merged", 13, 1)).replace(b'"project":"openstack/cinder"',
                                                          b'"project":"openstack\\/cinder"'),  # escaped
        line(state_event("change-merged", 14, 1)).replace(b'"patchSet":{"number":1,', b'"patchSet":{'),
    ])
    scan = scanner.scan(block)
    # one row a change: (number, project, branch, status, status_time, patch set, merged patch set, …)
    assert [(r[0], r[3], r[6]) for r in scan.changes.rows.values()] == [
        (10, "MERGED", 4), (12, "ABANDONED", None), (13, "MERGED", 1)]
    assert scan.by_type == {"change-merged": 2, "patchset-created": 1, "change-abandoned": 1}
    assert [m.reason for m in scan.malformed] == ["missing_field:patchSet.number"]


def test_state_lines_the_typed_decoder_cannot_read_are_judged_on_their_bytes(registry: Registry) -> None:
    """Invalid JSON, or a field of another type: decoded in full (a reason) when they name a review project."""
    scanner = Scanner(registry.ci_accounts, registry.review_projects)
    good = line(state_event("change-merged", 20, 2))
    block = b"".join([
        good.replace(b'"eventCreatedOn"', b'"eventCreatedOn" oops', 0).replace(b'"submitter":{', b'"submitter":{{'),
        good.replace(b'"change":{', b'"change":"x","was":{'),  # change is not an object
        line(state_event("change-merged", 21, 2, project="openstack/horizon")).replace(b'"change":{',
                                                                                       b'"change":[1],"c":{'),
        line(state_event("change-restored", 22, 3)),
    ])
    scan = scanner.scan(block)
    assert [(r[0], r[3]) for r in scan.changes.rows.values()] == [(22, "NEW")]
    assert sorted(m.reason for m in scan.malformed) == ["invalid_field:change", "invalid_json"]
    assert scan.by_type == {"change-merged": 1, "change-restored": 1}  # the two malformed ones are not counted


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["patchset-created", "change-merged", "change-abandoned",
                                            "change-restored", "ref-updated"]),
                          st.sampled_from([PROJECT, "openstack/nova", "openstack/cinder-backup", "x/ü"]),
                          st.integers(1, 99), st.sampled_from(["compact", "spaced", "ascii", "reordered"])),
                max_size=12))
def test_scanner_state_facts_equal_decoding_every_line(specs: list[tuple[str, str, int, str]]) -> None:
    projects = frozenset({PROJECT, "x/ü"})
    raw = []
    for kind, project, number, fmt in specs:
        ev = state_event(kind, number, 1 + number % 3, project=project)
        if fmt == "reordered":
            items = list(ev.items())
            random.Random(number).shuffle(items)
            ev = dict(items)
        text = json.dumps(ev, separators=None if fmt == "spaced" else (",", ":"), ensure_ascii=fmt == "ascii")
        raw.append(text.encode() + b"\n")
    status_of = {"change-merged": "MERGED", "change-abandoned": "ABANDONED", "change-restored": "NEW",
                 "patchset-created": "NEW"}
    expected = ChangeRows()
    for r in raw:
        ev = json.loads(r)
        if ev["type"] in status_of and ev["change"]["project"] in projects:
            merged = ev["type"] == "change-merged"
            ps, t = ev["patchSet"]["number"], ev["eventCreatedOn"]
            expected.add_one(ChangeFact(ev["change"]["number"], ev["change"]["project"], ev["change"]["branch"],
                                        status_of[ev["type"]], t, ps, ps if merged else None, t if merged else None))
    scan = Scanner([], projects).scan(b"".join(raw))
    assert scan.changes.rows == expected.rows


def test_merges_in_a_followed_project_are_counted_on_either_path(registry: Registry) -> None:
    followed = "x/driverlog"
    merged = state_event("change-merged", 7, 2, project=followed)
    spaced = json.dumps(state_event("change-merged", 8, 1, project=followed), indent=1).replace("\n", " ")
    block = b"".join([
        line(merged),  # the typed decoder's path
        spaced.encode() + b"\n",  # another layout: decoded in full
        line(state_event("patchset-created", 9, 1, project=followed)),  # not a merge
        line(state_event("change-merged", 10, 1)),  # a review project's merge: a change fact, not followed
    ])
    scan = Scanner(registry.ci_accounts, registry.review_projects, [followed]).scan(block)
    assert scan.followed_merges == 2
    assert list(scan.changes.rows) == [10]
    assert Scanner(registry.ci_accounts, registry.review_projects).scan(block).followed_merges == 0
