"""The query language of the Gerrit test server: ``gerrit query`` text -> a predicate over stored changes.

Enough of Gerrit's operators for the daemon's queries (``commentby:``, ``reviewer:``, ``project:``, ``branch:``,
``change:``, ``status:``, ``after:``/``since:``, ``before:``/``until:``, ``limit:``; ``OR``, ``AND``, ``NOT``/``-``,
parentheses); any other operator is a :class:`QueryError`, as Gerrit refuses an unknown one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

DEFAULT_QUERY_LIMIT = 500


class QueryError(Exception):
    pass


@dataclass
class StoredChange:
    data: dict[str, Any]  # project, branch, id, number, subject, owner, url, status, createdOn
    last_updated: int
    messages: list[dict[str, Any]] = field(default_factory=list)  # timestamp, reviewer, message
    patch_sets: dict[int, dict[str, Any]] = field(default_factory=dict)

    def row(self, *, comments: bool, current_patch_set: bool, patch_sets: bool) -> dict[str, Any]:
        out = dict(self.data)
        out["lastUpdated"] = self.last_updated
        out["open"] = out.get("status", "NEW") == "NEW"
        if comments:
            out["comments"] = list(self.messages)
        sets = [self.patch_sets[n] for n in sorted(self.patch_sets)]
        if patch_sets:
            out["patchSets"] = sets
        if current_patch_set and sets:
            out["currentPatchSet"] = sets[-1]
        return out


Predicate = Callable[[StoredChange], bool]
_TOKEN = re.compile(r"""\s*(\(|\)|-?[A-Za-z_]+:(?:"[^"]*"|'[^']*'|\{[^}]*\}|[^\s()]+)|\S+)""")


def _time_arg(value: str) -> int:
    value = value.strip("\"'{}")
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})(?: (\d{2}:\d{2}:\d{2})(?:\.\d+)?)?(?: ([+-]\d{4}))?", value)
    if not m:
        raise QueryError(f'Invalid value for "after": {value}')
    stamp = datetime.strptime(f"{m.group(1)} {m.group(2) or '00:00:00'} {m.group(3) or '+0000'}",
                              "%Y-%m-%d %H:%M:%S %z")
    return int(stamp.astimezone(UTC).timestamp())


def _commented(change: StoredChange, who: str) -> bool:
    """The user wrote a review message on the change (the test server's meaning of commentby: and reviewer:)."""
    for m in change.messages:
        r = m.get("reviewer") or {}
        if who in (r.get("username"), r.get("email")):
            return True
    return False


def _term(token: str) -> Predicate | int:
    negate = token.startswith("-")
    key, _, value = token.lstrip("-").partition(":")
    value = value.strip("\"'{}") if key != "after" else value
    pred: Predicate
    if key == "limit":
        return int(value)
    if key in ("commentby", "reviewer"):
        pred = lambda c: _commented(c, value)  # noqa: E731
    elif key == "project":
        pred = lambda c: c.data.get("project") == value  # noqa: E731
    elif key == "branch":
        pred = lambda c: c.data.get("branch") == value  # noqa: E731
    elif key == "change":
        pred = lambda c: str(c.data.get("number")) == value  # noqa: E731
    elif key == "status":
        pred = lambda c: str(c.data.get("status", "NEW")).lower() == value.lower()  # noqa: E731
    elif key in ("after", "since"):
        t = _time_arg(value)
        pred = lambda c: c.last_updated >= t  # noqa: E731
    elif key in ("before", "until"):
        t = _time_arg(value)
        pred = lambda c: c.last_updated <= t  # noqa: E731
    else:
        raise QueryError(f"Unsupported operator {key}:{value}")
    return (lambda c: not pred(c)) if negate else pred


def parse_query(text: str) -> tuple[Predicate, int]:
    """A small recursive-descent parser: terms, implicit AND, AND, OR, NOT/-, parentheses, limit:N."""
    tokens: list[str] = [str(t) for t in _TOKEN.findall(text) if t]
    pos = 0
    limit = DEFAULT_QUERY_LIMIT

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def parse_or() -> Predicate:
        left = parse_and()
        while peek() == "OR":
            take()
            right = parse_and()
            left = (lambda a, b: lambda c: a(c) or b(c))(left, right)
        return left

    def parse_and() -> Predicate:
        parts: list[Predicate] = []
        while (tok := peek()) is not None and tok not in (")", "OR"):
            if tok == "AND":
                take()
                continue
            parts.append(parse_unary())
        return lambda c: all(p(c) for p in parts)

    def parse_unary() -> Predicate:
        nonlocal limit
        tok = take()
        if tok == "NOT":
            inner = parse_unary()
            return lambda c: not inner(c)
        if tok == "(":
            inner = parse_or()
            if peek() != ")":
                raise QueryError("unbalanced parentheses")
            take()
            return inner
        if ":" not in tok:
            raise QueryError(f"Unsupported query: {tok}")
        term = _term(tok)
        if isinstance(term, int):
            limit = min(limit, term)
            return lambda c: True
        return term

    predicate = parse_or()
    if pos != len(tokens):
        raise QueryError(f"unexpected {tokens[pos]!r}")
    return predicate, limit


class QueryArguments(NamedTuple):
    """``gerrit query``'s command line: its options, ``--start`` and the query's terms (only ``--format=JSON``)."""

    terms: list[str]
    start: int
    options: frozenset[str]

    @classmethod
    def parse(cls, args: list[str]) -> QueryArguments:
        options: set[str] = set()
        terms: list[str] = []
        start, fmt = 0, None
        it = iter(args)
        for a in it:
            if a == "--format":
                fmt = next(it, "")
            elif a.startswith("--format="):
                fmt = a.split("=", 1)[1]
            elif a in ("--start", "-S"):
                start = int(next(it, "0"))
            elif a.startswith("--start="):
                start = int(a.split("=", 1)[1])
            elif a in ("--comments", "--current-patch-set", "--patch-sets", "--all-approvals"):
                options.add(a)
            elif a == "--":
                terms.extend(it)
            elif a.startswith("--"):
                raise QueryError(f'"{a}" is not a valid option')
            else:
                terms.append(a)
        if (fmt or "").upper() != "JSON":
            raise QueryError("only --format=JSON is supported by this test server")
        return cls(terms, start, frozenset(options))
