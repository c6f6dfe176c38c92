"""Shields-style SVG badges: ``CI | passing``, ``failing``, ``stale``, ``unknown``.

The SVG comes from a Jinja2 template with autoescaping, like every page; only fixed words reach it here.
"""

from __future__ import annotations

from dataclasses import dataclass

COLOURS = {"passing": "#2e7d32", "failing": "#c62828", "stale": "#a26b00", "unknown": "#616161"}
LABEL = "CI"
CHAR_WIDTH = 7  # Verdana 11px is ~7px per character on average; the badge only needs to look right


@dataclass(frozen=True, slots=True)
class Badge:
    label: str
    message: str
    colour: str
    label_width: int
    message_width: int

    @property
    def width(self) -> int:
        return self.label_width + self.message_width


def badge(status: str) -> Badge:
    """The badge for a driver's status (one of :data:`COLOURS`)."""
    return Badge(LABEL, status, COLOURS.get(status, COLOURS["unknown"]), 10 + CHAR_WIDTH * len(LABEL),
                 10 + CHAR_WIDTH * len(status))
