"""The webhook outbox, the writer's side: which hooks a transition passes, the body each is sent, and the rows
queued in the transaction that records the transition (docs/notifications.md). The deliveries themselves are
``expose.webhooks``'s.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from driverlog_daemon.store.ci_health import Transition, transition_notice

if TYPE_CHECKING:
    from driverlog_daemon.config import WebhookConfig

RESULT_WORDS = {None: "no mark", "success": "passing", "failure": "failing"}


class DeliveryOutcome(NamedTuple):
    """What one attempt at a delivery came to, as the writer records it: delivered, dead, or due again later."""

    id: int  # webhook_outbox.id
    attempts: int
    status: int | None  # the HTTP status (None: no answer)
    error: str | None  # None when delivered
    delivered_at: float | None = None
    dead_at: float | None = None
    next_attempt_at: float | None = None  # when it is tried again (neither delivered nor dead)


def record(conn: sqlite3.Connection, outcome: DeliveryOutcome) -> None:
    """Write a delivery's outcome (the writer's thread: the delivery threads only read the outbox)."""
    if outcome.delivered_at is not None:
        conn.execute("UPDATE webhook_outbox SET delivered_at = ?, attempts = ?, last_status = ?, last_error = NULL "
                     "WHERE id = ?", (outcome.delivered_at, outcome.attempts, outcome.status, outcome.id))
    elif outcome.dead_at is not None:
        conn.execute("UPDATE webhook_outbox SET dead_at = ?, attempts = ?, last_status = ?, last_error = ? "
                     "WHERE id = ?", (outcome.dead_at, outcome.attempts, outcome.status, outcome.error, outcome.id))
    else:
        conn.execute("UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ?, last_status = ?, last_error = ? "
                     "WHERE id = ?", (outcome.attempts, outcome.next_attempt_at, outcome.status, outcome.error,
                                      outcome.id))


def passes(hook: WebhookConfig, driver_id: int, key: tuple[str, str, str], release: str) -> bool:
    """Whether a transition of this driver and release passes the hook's filters (each given filter must)."""
    project_id, vendor, name = key
    return ((not hook.project_id or project_id in hook.project_id)
            and (not hook.vendor or vendor in hook.vendor)
            and (not hook.driver or name in hook.driver or str(driver_id) in hook.driver)
            and (not hook.release or release.lower() in {r.lower() for r in hook.release}))


def payload(kind: str, t: Transition, key: tuple[str, str, str], review_url: str | None) -> str:
    """The JSON body of a delivery (docs/notifications.md): ``type``, ``transition``, ``driver``."""
    return json.dumps({"type": kind, **transition_notice(t, key, review_url)}, separators=(",", ":"),
                      ensure_ascii=False)


def headline(body: dict[str, Any], release_name: str | None = None) -> str:
    """``Acme Volume Driver (FC), Gazpacho: passing → failing``: a feed entry's title, a chat message's line."""
    t = body["transition"]
    release = release_name or t["release"].capitalize()
    return (f"{body['driver']['name']}, {release}: {RESULT_WORDS.get(t['from'], t['from'])} → "
            f"{RESULT_WORDS.get(t['to'], t['to'])}")


def queue(conn: sqlite3.Connection, kind: str, transitions: list[Transition],
                     hooks: Sequence[WebhookConfig], keys: Mapping[int, tuple[str, str, str]], now: float) -> None:
    """One outbox row per transition and webhook whose filters pass it."""
    rows = []
    for t in transitions:
        key = keys.get(t.driver_id)
        if key is None:
            continue
        # the review's URL; a verification judged again may be gone: its kept comment still knows the change's
        review_url = conn.execute(
            "SELECT review_url FROM verifications WHERE id = ? UNION ALL "
            "SELECT review_url FROM ci_comments WHERE change_number = ? AND review_url IS NOT NULL LIMIT 1",
            (t.verification_id, t.change_number)).fetchone()
        body = payload(kind, t, key, review_url[0] if review_url else None)
        for hook in hooks:
            if not passes(hook, t.driver_id, key, t.release):
                continue
            if kind == "retraction" and conn.execute(  # news only to a receiver the transition was sent to
                    "SELECT 1 FROM webhook_outbox WHERE hook = ? AND transition_id = ? AND kind = 'transition'",
                    (hook.name, t.id)).fetchone() is None:
                continue
            rows.append((hook.name, kind, t.id, t.driver_id, t.release, t.at, body, now, now))
    conn.executemany(
        """INSERT INTO webhook_outbox (hook, kind, transition_id, driver_id, release, at, body, queued_at,
                                       next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""", rows)
