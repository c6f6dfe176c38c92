"""docs/ is the public interfaces' reference: each table there is held to the code's own table — the configuration's
NamedTuples, the metrics registries, the route table, the argument parser, the schema of a fresh file — both ways,
so that a key, metric, route, option or column added without its line (or a line left for one removed) fails."""

from __future__ import annotations

import argparse
import re
import sqlite3
from pathlib import Path

import pytest

from driverlog_daemon import cli
from driverlog_daemon.config import Config, WebhookConfig
from driverlog_daemon.metrics import Metrics, WebMetrics
from driverlog_daemon.testing import ROOT

DOCS = ROOT / "docs"
TICKED = re.compile(r"`([^`]+)`")


def table_rows(path: Path) -> list[list[str]]:
    """The cells of every Markdown table row of ``path`` (header and rule rows left out)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| ]+\|", line):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.append(cells)
    return [r for r in rows if r[0] not in ("key", "metric", "route", "command", "column", "guarantee")]


def test_every_configuration_key_has_its_line() -> None:
    documented, section = set(), ""
    for first, *_ in table_rows(DOCS / "configuration.md"):
        for name in TICKED.findall(first):
            m = re.fullmatch(r"\[\[?(\w+)\]\]? (\w+)", name)
            if m:
                section, name = m.groups()
            documented.add((section, name))
    sections = {name: getattr(Config(), name)._fields for name in Config._fields if name not in ("source", "webhooks")}
    sections["webhook"] = WebhookConfig._fields
    code = {(s, k) for s, keys in sections.items() for k in keys}
    assert documented == code, (sorted(code - documented), sorted(documented - code))


def exported_metrics() -> set[str]:
    """Every family both sides export, the collectors read from the database fed one row each."""
    def families(exposition: bytes) -> set[str]:
        return set(re.findall(r"^# TYPE (\S+) ", exposition.decode(), re.M))

    daemon, web = Metrics(), WebMetrics(multiprocess=False)
    web.registry_size(1, 1)
    for side in (daemon, web):
        side.watch_releases(lambda: [("p", "v", "d", "r", 1, 1)])
        side.watch_drivers(lambda: [("p", "v", "d", "a", 1)])
        side.watch_health(lambda: [("p", "v", "d", 0.5, 0.5, False)])
        side.watch_gaps(lambda: ([], None, None))
        side.watch_history(lambda: (0, 0))
        side.watch_outbox(lambda: {"h": {"pending": 0, "dead": 0, "oldest_pending_age_seconds": None}})
        side.watch_jobs(lambda: [("p", "v", "d", 1, 0.5)])
    names = families(daemon.exposition()) | families(web.exposition())  # a counter's with its _total
    return {n for n in names if not n.startswith("process_")}


def test_every_metric_has_its_line() -> None:
    documented = {name for first, *_ in table_rows(DOCS / "metrics.md") for name in TICKED.findall(first)}
    documented.discard("process_*")
    assert documented == exported_metrics()


def test_every_route_has_its_line(tmp_path: Path) -> None:
    from driverlog_daemon.expose.web.app import App
    from driverlog_daemon.store.store import Store

    Store(tmp_path / "d.sqlite").close()
    app = App(tmp_path / "d.sqlite", lambda: None, Metrics(), lambda: (True, {}))  # type: ignore[arg-type,return-value]
    routes = {r.name for r in app.routes()} | {"/metrics"}
    documented = {name for first, *_ in table_rows(DOCS / "routes.md") for name in TICKED.findall(first)}
    assert documented == routes


def test_every_command_and_option_has_its_line() -> None:
    text = (DOCS / "cli.md").read_text()
    documented = {TICKED.findall(first)[0].split()[0] for first, *_ in table_rows(DOCS / "cli.md")}
    assert documented == set(cli.COMMANDS)
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {option}" for name, sub in commands.choices.items() for action in sub._actions
               for option in action.option_strings if action.help != argparse.SUPPRESS
               if option.startswith("--") and option not in ("--help", "--config") and option not in text]
    assert missing == []


def test_every_table_and_column_of_a_fresh_file_has_its_place(tmp_path: Path) -> None:
    from driverlog_daemon.store.store import Store

    Store(tmp_path / "d.sqlite").close()
    conn = sqlite3.connect(tmp_path / "d.sqlite")
    objects = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                           "AND name NOT LIKE 'sqlite_%'").fetchall()
    sections = re.split(r"(?m)^## ", (DOCS / "schema.md").read_text())
    undocumented = []
    for (name,) in objects:
        section = next((s for s in sections if re.match(rf"(View )?`?{re.escape(name)}`?\b", s)), None)
        if section is None:
            undocumented.append(name)
            continue
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]
        undocumented += [f"{name}.{c}" for c in columns if f"`{c}`" not in section and not re.search(
            rf"(^|[\s`,]){re.escape(c)}([,`\s]|$)", section.split("\n", 1)[1])]
    conn.close()
    assert undocumented == []


@pytest.mark.parametrize("doc", sorted(p.name for p in [ROOT / "README.md", *DOCS.glob("*.md")]))
def test_every_test_a_document_names_exists(doc: str) -> None:
    path = ROOT / doc if doc == "README.md" else DOCS / doc
    missing = []
    for file, name in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", path.read_text()):
        if not (ROOT / file).is_file() or (name and f"def {name}(" not in (ROOT / file).read_text()):
            missing.append(f"{file}::{name}" if name else file)
    assert missing == []
