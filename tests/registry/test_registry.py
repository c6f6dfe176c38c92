from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.cli import main
from driverlog_daemon.registry.load import Registry, RegistryError, load_registry, parse_registry
from driverlog_daemon.testing import DATA, UPSTREAM


def ours() -> dict[str, Any]:
    return json.loads(DATA.read_text())


def errors_of(doc: dict[str, Any] | str) -> list[str]:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(RegistryError) as info:
        parse_registry(text.encode())
    return info.value.errors


def test_upstream_registry_loads_unchanged(upstream_registry: Registry) -> None:
    assert upstream_registry.summary() == "221 drivers, 147 CI bindings, 79 CI accounts"
    emc = upstream_registry.by_account["emc-vmax-ci"]
    patterns = {d.ci.success_pattern for d in emc if d.ci}
    assert patterns >= {r"EMC_VMAX_FC \S+ : SUCCESS", r"EMC_VMAX_ISCSI \S+ : SUCCESS"}
    assert len(upstream_registry.by_account["jenkins"]) == 6


def test_validate_cli_on_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    if not UPSTREAM.exists():
        pytest.skip(f"upstream registry not available at {UPSTREAM}")
    assert main(["validate", str(UPSTREAM)]) == 0
    assert capsys.readouterr().out == "ok: 221 drivers, 147 CI bindings, 79 CI accounts\n"


def test_our_registry_is_valid_and_realistic(registry: Registry) -> None:
    assert len(registry.projects) >= 4
    assert len(registry.drivers) >= 12
    assert any(r.active for r in registry.releases)
    assert all(r.start.year >= 2010 for r in registry.releases)
    # two drivers that share one CI account and one review project, told apart by pattern only
    shared = [ds for ds in registry.by_account.values()
              if len({d.review_project for d in ds}) < len(ds)]
    assert shared, "expected a CI account serving two drivers of one project"
    assert any(d.repo and d.repo != d.project_id for d in registry.drivers)
    assert any(d.ci is None for d in registry.drivers)


def test_index_by_account_and_review_project(registry: Registry) -> None:
    globex = registry.by_account["globex-neutron-ci"][0]
    assert globex.project_id == "openstack/neutron"
    assert globex.review_project == "x/networking-globex"
    assert globex.ci is not None and globex.ci.success.search("globex-ml2-tempest http://x : SUCCESS")
    with pytest.raises(TypeError):
        registry.by_account["new"] = ()  # type: ignore[index]


def test_invalid_json_is_one_clear_error() -> None:
    assert errors_of('{"projects": [') == ["$: invalid JSON: Expecting value at line 1 column 15"]


def test_duplicate_keys_are_rejected_with_their_path() -> None:
    text = json.dumps(ours())
    text = text.replace('"vendor": "Initech",', '"vendor": "Initech", "vendor": "Initech2",', 1)
    assert errors_of(text) == ["drivers[2].vendor: duplicate key 'vendor'"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["drivers"][1].update(color="red"),
         "drivers[1]: Additional properties are not allowed ('color' was unexpected)"),
        (lambda d: d["drivers"][0]["maintainers"][0].update(phone="1"),
         "drivers[0].maintainers[0]: Additional properties are not allowed ('phone' was unexpected)"),
        (lambda d: d["drivers"][0]["ci"].update(label="Verified"),
         "drivers[0].ci: Additional properties are not allowed ('label' was unexpected)"),
        (lambda d: d["drivers"][0]["ci"].pop("failure_pattern"),
         "drivers[0].ci: 'failure_pattern' is a dependency of 'success_pattern'"),
        (lambda d: d["drivers"][3].pop("vendor"), "drivers[3]: 'vendor' is a required property"),
        (lambda d: d["releases"][0].update(start="2021-09-29"),
         "releases[0].start: '2021-09-29' does not match"),
    ],
)
def test_schema_errors_name_their_path(mutate: Any, expected: str) -> None:
    doc = ours()
    mutate(doc)
    errors = errors_of(doc)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_every_semantic_error_is_reported_at_once() -> None:
    doc = ours()
    doc["drivers"][0]["ci"]["success_pattern"] = "acme (fc"
    doc["drivers"][1]["ci"]["failure_pattern"] = "[z-a]"
    doc["drivers"][2]["releases"].append("Omega")
    doc["drivers"][3]["project_id"] = "openstack/swift"
    doc["drivers"].append(copy.deepcopy(doc["drivers"][5]))
    doc["releases"][1]["start"] = "2022-Feb-30"
    errors = errors_of(doc)
    assert errors == [
        "releases[1].start: unparsable date '2022-Feb-30'",
        "drivers[0].ci.success_pattern: missing ), unterminated subpattern at position 5",
        "drivers[1].ci.failure_pattern: bad character range z-a at position 1",
        "drivers[2].releases[4]: 'Omega' is not among releases",
        "drivers[3].project_id: 'openstack/swift' is not among projects",
        f"drivers[{len(doc['drivers']) - 1}]: duplicate driver ('openstack/neutron', 'Globex Networks', "
        "'Globex ML2 Mechanism Driver') (project_id, vendor, name), first at drivers[5]",
    ]


def test_schema_and_semantic_errors_together() -> None:
    doc = ours()
    doc["drivers"][0]["extra"] = 1
    doc["drivers"][1]["ci"]["success_pattern"] = "("
    errors = errors_of(doc)
    assert [e.split(":")[0] for e in errors] == ["drivers[0]", "drivers[1].ci.success_pattern"]


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path / "nope.json")
    assert info.value.errors == ["file not found"]
    proc = subprocess.run([sys.executable, "-m", "driverlog_daemon", "validate", str(tmp_path / "nope.json")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr == f"{tmp_path / 'nope.json'}: file not found\n"
    assert "Traceback" not in proc.stderr


def test_validate_cli_reports_every_error_one_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = ours()
    doc["drivers"][0]["ci"]["success_pattern"] = "("
    doc["drivers"][1]["releases"] = ["Nope"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["drivers[0].ci.success_pattern: missing ), unterminated subpattern at position 0",
                   "drivers[1].releases[0]: 'Nope' is not among releases"]


def test_validate_defaults_to_configured_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[registry]\npath = "{DATA}"\n')
    assert main(["validate", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.startswith("ok: 14 drivers")


# ---------------------------------------------------------------------------------- registries remembered as valid


def test_a_registry_found_valid_is_remembered_and_loads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  registry: Registry) -> None:
    monkeypatch.setenv("DRIVERLOG_CACHE_DIR", str(tmp_path / "cache"))
    first = load_registry(DATA, remember=True)
    assert len(list((tmp_path / "cache").glob("registry-valid-*"))) == 1
    again = load_registry(DATA, remember=True)  # from the marker: no schema or semantic checks
    assert again == first == registry


def test_changed_bytes_are_checked_again_whatever_was_remembered(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVERLOG_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "r.json"
    doc = json.loads(DATA.read_text())
    path.write_text(json.dumps(doc))
    load_registry(path, remember=True)
    doc["drivers"][0]["ci"]["success_pattern"] = "(unclosed"
    path.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match=r"drivers\[0\]\.ci\.success_pattern"):
        load_registry(path, remember=True)
    assert len(list((tmp_path / "cache").glob("registry-valid-*"))) == 1  # an invalid one is never remembered


def test_the_cache_can_be_turned_off_and_a_broken_one_costs_only_the_checks(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVERLOG_CACHE_DIR", "")
    assert load_registry(DATA, remember=True).summary()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("DRIVERLOG_CACHE_DIR", str(blocker))  # cannot be created: checked every time, no error
    assert load_registry(DATA, remember=True).summary()
    assert not (tmp_path / "cache").exists()


def test_a_cache_this_user_cannot_look_into_costs_only_the_checks(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Another user's HOME (a service's user with root's environment): looking is refused, which only root's
    # tests cannot cause, so the refusal is stood in for.
    import driverlog_daemon.registry.load as load

    class Unreadable(type(tmp_path)):  # type: ignore[misc]
        def exists(self, **_: object) -> bool:
            raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(load, "_validated_marker", lambda data: Unreadable(tmp_path / "cache" / "registry-valid-x"))
    assert load_registry(DATA, remember=True).summary()
