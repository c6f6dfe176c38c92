"""``driverlog-daemon registry diff OLD NEW``: what a proposed registry change does, one line a change naming its
driver, on DriverLog's own registry against a changed copy; the exit status of diff(1) (0 no change, 1 changes,
2 trouble) so that a reviewer's CI job can run it; ``--json``; a maintainer's e-mail address is never shown."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.cli import main
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.testing import UPSTREAM


def _changed_copy(tmp: Path) -> tuple[Path, dict[str, Any]]:
    doc = json.loads(UPSTREAM.read_text())
    bound = [d for d in doc["drivers"] if "ci" in d]
    what = {"pattern": bound[0], "account": bound[1], "maintainers": bound[2], "removed": bound[3]}
    what["pattern"]["ci"]["success_pattern"] = "Build succeeded \\(check\\)"
    what["account"]["ci"]["id"] = "another-ci"
    what["maintainers"]["maintainers"] = [{"name": "Someone Else", "email": "someone@example.org"}]
    doc["drivers"].remove(what["removed"])
    added = {**copy.deepcopy(bound[4]), "name": "A Driver Proposed Today"}
    doc["drivers"].append(added)
    doc["releases"].append({"id": "Hibiscus", "wiki": "https://wiki.openstack.org/wiki/Releases",
                            "start": "2026-Oct-01"})
    path = tmp / "proposed.json"
    path.write_text(json.dumps(doc, indent=1))
    return path, {**what, "added": added}


def _name(d: dict[str, Any]) -> str:
    return f"{d['project_id']}/{d['vendor']}/{d['name']}"


def test_each_change_is_one_line_naming_its_driver(upstream_registry: Registry, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    proposed, what = _changed_copy(tmp_path)
    assert main(["registry", "diff", str(UPSTREAM), str(proposed)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"~ driver {_name(what['pattern'])}: ci.success_pattern" in out
    assert f"~ driver {_name(what['account'])}: ci.id" in out
    assert f"~ driver {_name(what['maintainers'])}: maintainers" in out
    assert f"- driver {_name(what['removed'])}" in out
    assert f"+ driver {_name(what['added'])}" in out
    assert "+ release Hibiscus" in out
    assert f"! binding {_name(what['pattern'])}: judged again (patterns, releases)" in out
    assert f"! binding {_name(what['account'])}: judged again (account, releases)" in out
    assert f"! binding {_name(what['added'])}: judged again (new)" in out
    assert f"! binding {_name(what['removed'])}: removed, its marks go" in out
    # a new release maps every other binding's results again: all but the 3 judged again (one removed, one added)
    assert f"! {upstream_registry.ci_bindings - 3} other bindings: results mapped to releases again" in out
    assert not any("@" in line for line in out)  # the new maintainer's address is not shown
    assert out[-1].startswith("drivers: 1 added, 1 removed, 3 changed")

    assert main(["registry", "diff", str(UPSTREAM), str(proposed), "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert got["drivers"]["added"] == [{"project_id": what["added"]["project_id"], "vendor": what["added"]["vendor"],
                                        "name": "A Driver Proposed Today"}]
    assert got["releases"]["added"] == ["hibiscus"]
    assert {b["name"]: b["reasons"] for b in got["bindings"]["judged_again"] if b["reasons"] != ["releases"]} == {
        what["pattern"]["name"]: ["patterns", "releases"], what["account"]["name"]: ["account", "releases"],
        what["added"]["name"]: ["new"]}


def test_the_same_meaning_exits_0_and_trouble_exits_2(upstream_registry: Registry, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    reformatted = tmp_path / "reformatted.json"
    reformatted.write_text(json.dumps(json.loads(UPSTREAM.read_text()), indent=8))  # other bytes, same registry
    assert main(["registry", "diff", str(UPSTREAM), str(reformatted)]) == 0
    assert capsys.readouterr().out == "no change\n"
    broken = tmp_path / "broken.json"
    doc = json.loads(UPSTREAM.read_text())
    doc["drivers"][0]["releases"] = ["Omega"]
    broken.write_text(json.dumps(doc))
    assert main(["registry", "diff", str(UPSTREAM), str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: drivers[0].releases[0]: 'Omega' is not among releases" in err
    assert main(["registry", "diff", str(UPSTREAM), str(reformatted), "--database", str(tmp_path / "none")]) == 2
    assert "no database there" in capsys.readouterr().err
