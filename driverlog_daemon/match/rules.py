"""Match: a CI account's review message x the registry -> verifications, by DriverLog's rules; and the pure
step every source shares, :func:`examine`: a block of lines -> scanned -> matched :class:`Findings`.

The rules (``shared/docs/matching-rules.md``), in short: the comment's author is a driver's CI account
(exact, case-sensitive); the change's project is the driver's review project; the ``Patch Set N:`` prefix is
removed, the rest split into non-blank lines, and the first line on which the success pattern, then the
failure pattern, ``re.search``-matches decides, that line being the evidence. A CI without patterns (DriverLog
2014's ``ci_id``) is judged by its Verified vote instead (:func:`judge_vote`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

from driverlog_daemon.match.kept import keep
from driverlog_daemon.model import Approval, ChangeFact, CommentAdded, Result, Verification
from driverlog_daemon.parse.events import Malformed, comment_fact, excerpt
from driverlog_daemon.parse.scanner import Findings, Scanner
from driverlog_daemon.registry.load import CIBinding, Registry

_PATCH_SET_PREFIX = re.compile(r"Patch Set (\d+):")


def message_patch_set(message: str) -> int | None:
    """The N of a review message that begins with ``Patch Set N:`` (query output), else None."""
    m = _PATCH_SET_PREFIX.match(message)
    return int(m.group(1)) if m else None


def comment_lines(comment: str) -> list[str]:
    """Rules 2-3: remove a leading ``Patch Set N:``, strip, split into lines, drop the blank ones."""
    m = _PATCH_SET_PREFIX.match(comment)
    body = comment[m.end():] if m else comment
    return list(filter(str.strip, body.strip().split("\n")))


def judge(lines: list[str], ci: CIBinding) -> tuple[Result, str] | None:
    """Rule 4: the first line on which success (tried first) or failure matches decides; None if none does."""
    success, failure = ci.success.search, ci.failure.search
    for line in lines:
        if success(line):
            return "success", line
        if failure(line):
            return "failure", line
    return None


_VOTE = re.compile(r"(Verified|VRIF)([+-]\d+)")
_VOTE_LABELS = ("Verified", "VRIF")  # the label's name on current servers, its category id on old ones


def judge_vote(comment: str, approvals: tuple[Approval, ...]) -> tuple[Result, str] | None:
    """The vote rule (a CI without patterns): the Verified vote the comment carries decides, positive a success,
    negative a failure, none or 0 no result; the evidence is the vote as written (``Verified+1``).

    A comment that begins with ``Patch Set N:`` is read from that first line (``Patch Set 3: Code-Review+1
    Verified-1``): it is all a backfilled message has, and an event's ``approvals`` also list votes the comment did
    not cast. Only a comment without that line (older servers' events) is read from its ``approvals``, the vote
    written as Gerrit writes it on the first line; when the server marks the votes this comment changed (an
    ``oldValue``), only those were cast by it.
    """
    m = _PATCH_SET_PREFIX.match(comment)
    if m:
        for token in comment[m.end():].partition("\n")[0].split():
            vote = _VOTE.fullmatch(token)
            if vote:
                value = int(vote.group(2))
                return None if value == 0 else ("success" if value > 0 else "failure", token)
        return None
    if any(a.old_value is not None for a in approvals):
        approvals = tuple(a for a in approvals if a.old_value is not None)
    for approval in approvals:
        if approval.type in _VOTE_LABELS or approval.description in _VOTE_LABELS:
            try:
                value = int(approval.value)
            except ValueError:
                return None
            label = "Verified" if "Verified" in (approval.type, approval.description) else approval.type
            return None if value == 0 else ("success" if value > 0 else "failure", f"{label}{value:+d}")
    return None


def comment_sha256(comment: str) -> str:
    """The comment part of a verification's natural key.

    Normalised so that the live event and the backfilled message of one review hash alike: the whole
    ``Patch Set N: <votes>`` first line is dropped (old servers sent events without it), every line is
    stripped and blank lines are dropped.
    """
    text = comment.partition("\n")[2] if _PATCH_SET_PREFIX.match(comment) else comment
    normalised = "\n".join(filter(None, map(str.strip, text.split("\n"))))
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def read_comment(comment: str) -> tuple[list[str], Callable[[], str]]:
    """``comment_lines(comment)`` and a function giving ``comment_sha256(comment)`` from the same split.

    The hash reuses the lines: they are the comment's non-blank lines, the first one being what follows the
    ``Patch Set N:`` prefix on its line (dropped for the hash when it is not blank).
    """
    m = _PATCH_SET_PREFIX.match(comment)
    body = comment[m.end():] if m else comment
    lines = list(filter(str.strip, body.strip().split("\n")))

    def digest() -> str:
        drop = 1 if m and body.partition("\n")[0].strip() else 0
        normalised = "\n".join(map(str.strip, lines[drop:]))
        return hashlib.sha256(normalised.encode("utf-8")).hexdigest()

    return lines, digest


def release_for(branch: str, when: int, registry: Registry) -> str:
    """The registry's release id a result on ``branch`` at ``when`` (epoch seconds) belongs to, or ""."""
    b = branch.lower()
    if "/" in b[1:]:  # stable/<x>, unmaintained/<x>: <x> is a release id or a series number (2024.1)
        release = registry.releases_by_branch_name.get(b.split("/", 1)[1])
        return release.id if release else ""
    if b == "master":
        if not registry.releases:
            return ""
        for release in reversed(registry.releases):
            if release.start_epoch < when:
                return release.id
        return registry.releases[-1].id
    return ""


class Judgement(NamedTuple):
    verifications: list[Verification]
    is_ci_comment: bool  # the author is a registered CI account (whether or not a pattern matched)
    sha256: str = ""  # the comment's natural key hash (comment_sha256), for a CI account's comment


def match_comment(event: CommentAdded, registry: Registry, *, sha256: str | None = None,
                  only: tuple[str, str, str] | None = None) -> Judgement:
    """Judge one review message for every driver bound to its author (``only``: for that driver alone).

    ``sha256``: the comment's natural key hash when it is known (a kept comment, whose text may be cut short);
    else it is computed from the comment."""
    drivers = registry.by_account.get(event.author.username or "")
    if not drivers:
        return Judgement([], False)
    change = event.change
    lines, hasher = read_comment(event.comment)
    digest = sha256 or hasher()
    vote: tuple[Result, str] | None = None
    vote_read = False
    found: list[Verification] = []
    for driver in drivers:
        if driver.review_project != change.project or driver.ci is None or (only is not None and driver.key != only):
            continue
        if driver.ci.by_vote:
            if not vote_read:
                vote, vote_read = judge_vote(event.comment, event.approvals), True
            verdict = vote
        else:
            verdict = judge(lines, driver.ci)
        if verdict is None:
            continue
        found.append(
            Verification(
                driver_key=driver.key,
                ci_account=driver.ci.account,
                change_number=change.number,
                patch_set=event.patch_set,
                comment_sha256=digest,
                comment_time=event.created_on,
                result=verdict[0],
                evidence=verdict[1],
                project=change.project,
                branch=change.branch,
                release=release_for(change.branch, event.created_on, registry),
                change_status=change.status,
                review_url=change.url,
                change_id=change.id,
            )
        )
    return Judgement(found, True, digest)


def match_findings(findings: Findings, registry: Registry) -> Findings:
    """Judge the findings' CI comments (then forget them): verifications, counts by CI account, each comment kept
    (:mod:`kept`), and what each comment says of its change when the change is of a review project."""
    projects = registry.review_projects
    for comment in findings.comments:
        if comment.change.project in projects:
            findings.changes.add_one(comment_fact(comment))
        judgement = match_comment(comment, registry)
        if not judgement.is_ci_comment:
            continue
        account = comment.author.username or ""
        findings.ci_comments[account] += 1
        findings.kept.append(keep(comment, judgement.sha256))
        if judgement.verifications:
            findings.verifications.extend(judgement.verifications)
        else:
            findings.unmatched[account] += 1
    findings.comments = []
    return findings


def new_scanner(registry: Registry, followed: Iterable[str] = ()) -> Scanner:
    """A scanner for the registry's CI accounts and the review projects whose change state is kept (and the
    ``followed`` projects whose merges are counted)."""
    return Scanner(registry.ci_accounts, registry.review_projects, followed)


def examine(scanner: Scanner, registry: Registry, block: bytes, start: int = 0, end: int | None = None) -> Findings:
    """Scan a block of complete lines and match its CI comments. No state, no I/O: safe in any process.

    A line no rule foresaw (a bug it reaches) costs that line alone: the block is examined again line by line,
    and the line that fails is malformed, ``internal_error:<exception>``."""
    try:
        return match_findings(scanner.scan(block, start, end), registry)
    except Exception:
        return _line_by_line(scanner, registry, block, start, len(block) if end is None else end)


def _line_by_line(scanner: Scanner, registry: Registry, block: bytes, start: int, end: int) -> Findings:
    findings = Findings()
    pos = start
    while pos < end:
        line_end = block.find(b"\n", pos, end)
        line_end = end if line_end < 0 else line_end
        try:
            findings.merge(match_findings(scanner.scan(block, pos, line_end), registry))
        except Exception as exc:
            findings.lines += 1
            findings.malformed.append(Malformed(f"internal_error:{type(exc).__name__}", excerpt(block[pos:line_end])))
        pos = line_end + 1
    return findings


def examine_messages(comments: Iterable[CommentAdded], changes: Iterable[ChangeFact], registry: Registry) -> Findings:
    """Backfill's equivalent of :func:`examine`: review messages already decoded, and change facts. A message no
    rule foresaw costs itself alone, as a line does."""
    comments, changes = list(comments), list(changes)
    try:
        return _messages(comments, changes, registry)
    except Exception:
        findings = Findings()
        one_by_one: list[tuple[list[CommentAdded], list[ChangeFact], int]] = [
            *(([c], [], c.change.number) for c in comments), *(([], [f], f.number) for f in changes)]
        for one_comment, one_fact, number in one_by_one:
            try:
                findings.merge(_messages(one_comment, one_fact, registry))
            except Exception as exc:
                findings.malformed.append(Malformed(f"internal_error:{type(exc).__name__}", f"change {number!r}"))
        return findings


def _messages(comments: list[CommentAdded], changes: list[ChangeFact], registry: Registry) -> Findings:
    findings = Findings()
    findings.comments = comments
    projects = registry.review_projects
    for fact in changes:
        if fact.project in projects:
            findings.changes.add_one(fact)
    return match_findings(findings, registry)
