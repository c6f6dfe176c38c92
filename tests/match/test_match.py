from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driverlog_daemon.match.rules import (
    comment_lines,
    comment_sha256,
    match_comment,
    message_patch_set,
    read_comment,
    release_for,
)
from driverlog_daemon.model import Account, Change, CommentAdded
from driverlog_daemon.registry.load import Registry, RegistryError, parse_registry


def make_registry(*drivers: dict[str, object], releases: list[dict[str, object]] | None = None) -> Registry:
    return parse_registry(json.dumps({
        "projects": [{"id": p, "name": p} for p in ("openstack/neutron", "openstack/cinder", "openstack/fuel")],
        "releases": releases if releases is not None else [
            {"id": "Queens", "wiki": "", "start": "2018-Feb-28"},
            {"id": "Rocky", "wiki": "", "start": "2018-Aug-29", "active": True},
        ],
        "drivers": list(drivers),
    }))


def driver(name: str, account: str, success: str, failure: str, project: str = "openstack/neutron",
           **extra: object) -> dict[str, object]:
    return {"project_id": project, "vendor": "V", "name": name,
            "ci": {"id": account, "success_pattern": success, "failure_pattern": failure}, **extra}


def comment(text: str, author: str = "cisco_neutron_ci", project: str = "openstack/neutron",
            branch: str = "master", when: int = 1_540_000_000, number: int = 92468, ps: int = 2) -> CommentAdded:
    return CommentAdded(author=Account(username=author), change=Change(project=project, branch=branch, number=number),
                        patch_set=ps, comment=text, created_on=when)


CISCO = driver("Cisco", "cisco_neutron_ci", r"neutron_zuul \S+ : SUCCESS", r"neutron_zuul \S+ : FAILURE")


def test_worked_example_from_upstream() -> None:
    reg = make_registry(CISCO)
    text = ("Patch Set 2:\n\nBuild succeeded.\n\n"
            "- neutron_zuul http://128.107.233.28:8080/job/neutron_zuul/263 : SUCCESS in 18m 52s")
    [v] = match_comment(comment(text), reg).verifications
    assert (v.result, v.evidence) == (
        "success", "- neutron_zuul http://128.107.233.28:8080/job/neutron_zuul/263 : SUCCESS in 18m 52s")
    assert (v.change_number, v.patch_set, v.ci_account, v.project, v.branch) == (
        92468, 2, "cisco_neutron_ci", "openstack/neutron", "master")
    assert v.driver_key == ("openstack/neutron", "V", "Cisco")
    assert v.release == "Rocky"


def test_loose_pattern_first_deciding_line_wins() -> None:
    reg = make_registry(driver("Loose", "loose-ci", "SUCCESS", "FAILURE"))
    text = "Build failed.\n\n- a http://x : SUCCESS\n- b http://y : FAILURE"
    [v] = match_comment(comment(text, author="loose-ci"), reg).verifications
    assert (v.result, v.evidence) == ("success", "- a http://x : SUCCESS")


def test_success_is_tried_before_failure_on_one_line() -> None:
    reg = make_registry(driver("Both", "both-ci", "ok", "FAIL"))
    [v] = match_comment(comment("FAIL then ok on one line", author="both-ci"), reg).verifications
    assert v.result == "success"


def test_failure_on_an_earlier_line_wins() -> None:
    reg = make_registry(driver("D", "d-ci", "SUCCESS", "FAILURE"))
    [v] = match_comment(comment("Patch Set 1:\n\n- x : FAILURE\n- y : SUCCESS", author="d-ci"), reg).verifications
    assert (v.result, v.evidence) == ("failure", "- x : FAILURE")


def test_blank_lines_are_dropped_before_matching() -> None:
    # A pattern that matches an empty line would decide on a blank line if blank lines were kept.
    reg = make_registry(driver("Empty", "e-ci", "^$", "FAILURE"))
    [v] = match_comment(comment("Patch Set 1:\n\n   \n\n- job : FAILURE", author="e-ci"), reg).verifications
    assert v.result == "failure"


def test_prefix_is_removed_and_text_stripped() -> None:
    assert comment_lines("Patch Set 12: Verified+1\n\n  Build succeeded.  \n\n- a : SUCCESS\n") == [
        "Verified+1", "  Build succeeded.  ", "- a : SUCCESS"]
    assert comment_lines("Build succeeded.") == ["Build succeeded."]  # old servers: no prefix
    # An anchored pattern sees the line as it stands after the prefix is removed
    reg = make_registry(driver("Anchored", "a-ci", "^Build succeeded", "^Build failed"))
    [v] = match_comment(comment("Patch Set 1:Build succeeded", author="a-ci"), reg).verifications
    assert v.result == "success"


def test_no_matching_line_is_a_ci_comment_but_no_result() -> None:
    reg = make_registry(CISCO)
    outcome = match_comment(comment("Patch Set 2:\n\nStarting check jobs."), reg)
    assert outcome.is_ci_comment and outcome.verifications == []


def test_several_drivers_on_one_account_are_judged_separately() -> None:
    reg = make_registry(
        driver("FC", "emc-ci", r"EMC_VMAX_FC \S+ : SUCCESS", r"EMC_VMAX_FC \S+ : FAILURE", project="openstack/cinder"),
        driver("ISCSI", "emc-ci", r"EMC_VMAX_ISCSI \S+ : SUCCESS", r"EMC_VMAX_ISCSI \S+ : FAILURE",
               project="openstack/cinder"),
        driver("Other", "emc-ci", r"EMC_VNX \S+ : SUCCESS", r"EMC_VNX \S+ : FAILURE", project="openstack/cinder"),
    )
    text = "Patch Set 4:\n\n- EMC_VMAX_ISCSI http://a : FAILURE\n- EMC_VMAX_FC http://b : SUCCESS"
    got = {v.driver_key[2]: (v.result, v.evidence)
           for v in match_comment(comment(text, author="emc-ci", project="openstack/cinder"), reg).verifications}
    assert got == {"FC": ("success", "- EMC_VMAX_FC http://b : SUCCESS"),
                   "ISCSI": ("failure", "- EMC_VMAX_ISCSI http://a : FAILURE")}


def test_repo_overrides_project_id() -> None:
    reg = make_registry(driver("Plugin", "fuel-ci", "SUCCESS", "FAILURE", project="openstack/fuel",
                               repo="openstack/fuel-plugin-x"))
    assert match_comment(comment("SUCCESS", author="fuel-ci", project="openstack/fuel-plugin-x"), reg).verifications
    assert not match_comment(comment("SUCCESS", author="fuel-ci", project="openstack/fuel"), reg).verifications


def test_project_mismatch_gives_nothing() -> None:
    reg = make_registry(CISCO)
    outcome = match_comment(comment("- neutron_zuul x : SUCCESS", project="openstack/nova"), reg)
    assert outcome.verifications == [] and outcome.is_ci_comment


def test_username_compared_exactly_case_included() -> None:
    reg = make_registry(CISCO)
    outcome = match_comment(comment("- neutron_zuul x : SUCCESS", author="Cisco_Neutron_CI"), reg)
    assert not outcome.is_ci_comment and outcome.verifications == []


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("branch", "when", "expected"),
    [
        ("stable/rocky", "2020-01-01", "Rocky"),
        ("stable/ROCKY", "2020-01-01", "Rocky"),  # case-insensitive, the registry's own id kept
        ("Stable/Queens", "2020-01-01", "Queens"),
        ("stable/2024.1", "2024-05-01", ""),  # not a release of the registry
        ("feature/foo", "2020-01-01", ""),
        ("master", "2018-08-30", "Rocky"),
        ("master", "2018-08-29", "Queens"),  # start is midnight UTC: must be strictly earlier
        ("master", "2018-03-01", "Queens"),
        ("master", "2017-01-01", "Rocky"),  # before the first release: the last release (upstream's rule)
        ("MASTER", "2018-09-01", "Rocky"),
        ("develop", "2018-09-01", ""),
        ("/rocky", "2018-09-01", ""),
    ],
)
def test_release_mapping(branch: str, when: str, expected: str) -> None:
    reg = make_registry(CISCO)
    assert release_for(branch, ts(when), reg) == expected


def test_release_mapping_with_no_releases() -> None:
    assert release_for("master", ts("2020-01-01"), make_registry(CISCO, releases=[])) == ""


def test_message_patch_set() -> None:
    assert message_patch_set("Patch Set 3: Verified+1\n\nok") == 3
    assert message_patch_set("Uploaded patch set 2.") is None
    assert message_patch_set(" Patch Set 3:") is None


def test_comment_hash_is_the_same_for_event_and_query_forms() -> None:
    event_text = "Patch Set 3: Verified+1\n\nBuild succeeded.\n\n- job http://x : SUCCESS in 1m"
    old_server = "Build succeeded.\n- job http://x : SUCCESS in 1m  \n"
    assert comment_sha256(event_text) == comment_sha256(old_server)
    assert comment_sha256(event_text) != comment_sha256(event_text.replace("SUCCESS", "FAILURE"))


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(alphabet=st.sampled_from(list("ab :\n\r\t \x0b\u2028P")), max_size=40),
    st.builds(lambda ps, sep, votes, body: f"Patch Set {ps}:{votes}{sep}{body}", st.integers(0, 20),
              st.sampled_from(["\n", "\n\n", " \n", "\r\n", ""]), st.sampled_from(["", " Verified+1", "   "]),
              st.text(alphabet=st.sampled_from(list("ab -:\n\t \x0b")), max_size=40)),
))
def test_read_comment_agrees_with_the_reference_definitions(text: str) -> None:
    lines, digest = read_comment(text)
    assert lines == comment_lines(text)
    assert digest() == comment_sha256(text)


SERIES_RELEASES: list[dict[str, object]] = [
    {"id": "Antelope", "wiki": "", "start": "2022-Sep-21"},  # no key: OpenStack's published table says 2023.1
    {"id": "Caracal", "wiki": "", "start": "2023-Oct-04", "series": "2024.1"},
    {"id": "Custom", "wiki": "", "start": "2024-Oct-02", "series": "2024.2"},  # the registry's key wins
]


@pytest.mark.parametrize(
    ("branch", "expected"),
    [
        ("stable/2024.1", "Caracal"),  # by the registry's series key
        ("stable/2023.1", "Antelope"),  # by the built-in table of published series
        ("unmaintained/2023.1", "Antelope"),
        ("unmaintained/antelope", "Antelope"),
        ("unmaintained/Caracal", "Caracal"),
        ("stable/2024.2", "Custom"),
        ("stable/2025.1", ""),  # Epoxy's series, but Epoxy is not a release of this registry
        ("stable/2024", ""),
    ],
)
def test_series_branches_map_to_releases(branch: str, expected: str) -> None:
    reg = make_registry(CISCO, releases=SERIES_RELEASES)
    assert release_for(branch, ts("2025-01-01"), reg) == expected


def test_a_series_given_twice_is_an_error() -> None:
    with pytest.raises(RegistryError, match=r"releases\[1\]\.series: '2024\.1' is already the series of releases\[0\]"):
        make_registry(CISCO, releases=[{"id": "Caracal", "wiki": "", "start": "2023-Oct-04", "series": "2024.1"},
                                       {"id": "Other", "wiki": "", "start": "2024-Oct-04", "series": "2024.1"}])


def test_a_malformed_series_is_a_schema_error() -> None:
    with pytest.raises(RegistryError, match=r"releases\[0\]\.series: '24\.1' does not match"):
        make_registry(CISCO, releases=[{"id": "Caracal", "wiki": "", "start": "2023-Oct-04", "series": "24.1"}])
