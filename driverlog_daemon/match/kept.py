"""Kept comments: every review message of a registered CI account, as the ``ci_comments`` table holds it.

A registry change (a new binding, a fixed pattern, another review project, a release) judges the comments the file
holds again instead of asking Gerrit for them (docs/history.md). So every source keeps what it read of the
registered accounts, verdict or not: the message as Gerrit wrote it, compressed, with the change fields a
verification copies. :func:`keep` makes the row (in the process that matched the comment: replay's workers
compress in parallel), :func:`restore` gives back the :class:`CommentAdded` the matcher judges.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable

from driverlog_daemon.model import Account, Approval, Change, CommentAdded, KeptComment

MAX_BYTES = 64 * 1024  # of a message's UTF-8 kept; a verdict line past it is not judged again
LEVEL = 1  # zlib's fastest level: a CI's comment of 1-3 KB keeps ~400 B, at ~20 µs (docs/performance.md)
_PATCH_SET = "Patch Set "


def keep(comment: CommentAdded, sha256: str) -> KeptComment:
    """The row for a CI account's review message whose natural key hash is ``sha256``."""
    data = comment.comment.encode("utf-8", "surrogatepass")
    truncated = len(data) > MAX_BYTES
    approvals = None
    if comment.approvals and not comment.comment.startswith(_PATCH_SET):
        approvals = json.dumps([list(a) for a in comment.approvals], separators=(",", ":"))
    c = comment.change
    return KeptComment(comment.author.username or "", c.number, comment.patch_set, sha256, comment.created_on,
                       c.project, c.branch, c.status, c.url, c.id, zlib.compress(data[:MAX_BYTES], LEVEL),
                       approvals, int(truncated))


#: The columns of ``ci_comments`` that :func:`restore` reads, in its order.
RESTORE_COLUMNS = ("ci_account", "change_number", "patch_set", "comment_time", "project", "branch", "change_status",
                   "review_url", "change_id", "body", "approvals")


def restore(row: Iterable[object]) -> CommentAdded:
    """The :class:`CommentAdded` of a row read as :data:`RESTORE_COLUMNS` (the author's name and e-mail are not
    kept: matching reads only the username)."""
    account, number, patch_set, created, project, branch, status, url, change_id, body, approvals = row
    assert isinstance(body, bytes)
    text = zlib.decompress(body).decode("utf-8", "replace")
    votes: tuple[Approval, ...] = ()
    if isinstance(approvals, str):
        votes = tuple(Approval(*a) for a in json.loads(approvals))
    return CommentAdded(author=Account(username=str(account)),
                        change=Change(str(project), str(branch), int(number),  # type: ignore[call-overload]
                                      change_id if isinstance(change_id, str) else None,
                                      url if isinstance(url, str) else None,
                                      status if isinstance(status, str) else None),
                        patch_set=int(patch_set), comment=text,  # type: ignore[call-overload]
                        created_on=int(created), approvals=votes)  # type: ignore[call-overload]
