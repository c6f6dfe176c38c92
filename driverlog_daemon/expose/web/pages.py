"""What the HTML pages show, computed from the records and the database's rows (the templates only lay it out)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup, escape

from driverlog_daemon.expose.web import api
from driverlog_daemon.parse.bounds import utc_text
from driverlog_daemon.registry.load import Registry

CHART_WIDTH, CHART_HEIGHT = 540, 90


def took(seconds: int | None) -> str:
    """A job's duration as a reader says it: 43m, 1h 02m, 45s; — when not known."""
    if seconds is None:
        return "—"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m" if m else f"{s}s"


def percent(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.0%}"


def index(records: list[dict[str, Any]], registry: Registry, query: Mapping[str, str], now: float,
          stale_after_days: float) -> dict[str, Any]:
    """The status page: drivers by project after the filters (project, vendor, release, ``q`` in vendor, driver
    or CI account, ``at_risk``), the releases shown, and the header's counts."""
    filters = api.Filters.parse(query)
    shown_releases = [r for r in reversed(registry.releases)  # newest first
                      if (r.id.lower() in filters.release_ids if filters.release_ids is not None else r.active)]
    chosen = [r for r in records if api.passes(r, filters, registry, release=filters.release_ids is not None)]
    words = query.get("q", "").strip().lower()
    if words:
        chosen = [r for r in chosen
                  if words in " ".join((r["vendor"], r["name"], r.get("ci", {}).get("id", ""))).lower()]
    if query.get("at_risk"):
        chosen = [r for r in chosen if r["health"] and r["health"]["at_risk"] is True]
    by_project: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(chosen, key=lambda r: (r["project_name"], r["vendor"].lower(), r["name"].lower())):
        by_project.setdefault(r["project_name"], []).append(r)
    stale = now - stale_after_days * 86400
    accounts: dict[str, int] = {}
    for r in records:
        if "ci" in r:
            last = r["latest"]["timestamp"] if r["latest"] else 0
            accounts[r["ci"]["id"]] = max(accounts.get(r["ci"]["id"], 0), last)
    counts = {"drivers": len(records),
              "with_mark": sum(1 for r in records if any(v["ci_tested"] for v in r["releases"].values())),
              "silent": sum(1 for t in accounts.values() if t < stale), "ci_accounts": len(accounts),
              "at_risk": sum(1 for r in records if r["health"] and r["health"]["at_risk"] is True),
              # with a short history no driver's at-risk is known yet: "0" would say none is
              "at_risk_known": sum(1 for r in records if r["health"] and r["health"]["at_risk"] is not None)}
    return {"by_project": by_project, "releases": shown_releases, "filters": filters, "counts": counts,
            "vendors": sorted({r["vendor"] for r in records}, key=str.lower)}


def chart(days: Sequence[tuple[int, int, int]]) -> dict[str, Any]:
    """A bar a day of passes (below) and failures (stacked above), scaled to the busiest day: the driver page's
    90-day chart, drawn as SVG by the template (no script), with its text alternative."""
    top = max((p + f for _, p, f in days), default=0) or 1
    step = CHART_WIDTH / max(len(days), 1)
    bars = []
    for i, (day, passes, failures) in enumerate(days):
        hp, hf = passes * CHART_HEIGHT / top, failures * CHART_HEIGHT / top
        bars.append({"x": round(i * step, 1), "w": round(max(step - 1, 1), 1), "day": day, "passes": passes,
                     "failures": failures, "pass_y": round(CHART_HEIGHT - hp, 1), "pass_h": round(hp, 1),
                     "fail_y": round(CHART_HEIGHT - hp - hf, 1), "fail_h": round(hf, 1)})
    passes, failures = sum(p for _, p, _ in days), sum(f for _, _, f in days)
    busiest = max(days, key=lambda d: d[1] + d[2], default=None)
    summary = f"{counted(passes, 'pass', 'passes')} and {counted(failures, 'failure')} over the last " \
              f"{counted(len(days), 'day')}"
    if busiest is not None and busiest[1] + busiest[2]:
        summary += f"; the busiest day had {counted(busiest[1] + busiest[2], 'run')}"
    # the dates under the bars: the first day, the middle one and today (UTC)
    axis = [utc_text(days[i][0] * 86400, "%Y-%m-%d") for i in (0, len(days) // 2, len(days) - 1)] if days else []
    return {"bars": bars, "width": CHART_WIDTH, "height": CHART_HEIGHT, "summary": summary, "top": top,
            "axis": axis}


#: What XML 1.0 forbids in a document (C0 controls but tab, newline and return; lone surrogates; U+FFFE, U+FFFF):
#: one such character from Gerrit in a feed or a badge would make the whole document unreadable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(value: object) -> object:
    """Every ``{{ }}`` output of the templates (Jinja's ``finalize``): text without the characters XML forbids
    (HTML forbids them too). Markup stays Markup, so it is not escaped twice."""
    if isinstance(value, str) and _NOT_XML.search(value):
        cleaned = _NOT_XML.sub("", value)
        return Markup(cleaned) if isinstance(value, Markup) else cleaned
    return value


def counted(n: int, one: str, many: str | None = None) -> str:
    """``1 failure``, ``2 failures``."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)


def linked(text: object) -> Markup:
    """Evidence text with its ``http``/``https`` URLs as links (a CI's log), everything escaped; any other scheme
    stays text. A URL's trailing punctuation is left outside the link."""
    text = "" if text is None else str(text)
    out, at = [], 0
    for m in _URL.finditer(text):
        url = m.group(0).rstrip(".,;:)]}")
        out.append(escape(text[at:m.start()]))
        out.append(Markup('<a href="{0}" rel="noreferrer nofollow">{0}</a>').format(url))
        at = m.start() + len(url)
    out.append(escape(text[at:]))
    return Markup("").join(out)


def safe_url(url: object) -> str | None:
    """Only http and https URLs become links; anything else (``javascript:``, ``data:``) is shown as text."""
    if not isinstance(url, str):
        return None
    scheme = urllib.parse.urlsplit(url.strip()).scheme.lower()
    return url if scheme in ("http", "https") else None


def ago(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} s ago"


def utc(ts: int | None) -> str:
    return "" if ts is None else utc_text(ts, "%Y-%m-%d %H:%M UTC")

def query_link(query: Mapping[str, str], **changes: str | None) -> str:
    """``?…`` with ``changes`` applied to ``query`` (None removes a key): the page's filter links."""
    merged = {k: v for k, v in {**query, **changes}.items() if v is not None and k != "page"}
    return "?" + urllib.parse.urlencode(sorted(merged.items())) if merged else "?"
