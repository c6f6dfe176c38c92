"""Webhooks: each mark transition that passes a ``[[webhook]]``'s filters, POSTed to its receiver, signed, at least
once, in order per driver and release.

The store queues a delivery in ``webhook_outbox`` in the same transaction that records (or, for late data, removes)
the transition (``store.outbox``), so that nothing recorded can be missed by a crash. Here one thread per hook takes
the oldest pending delivery of each driver × release whose time has come, POSTs it, and reports it delivered (a 2xx
answer) or due again after an exponential backoff with jitter, until ``retry_for_hours`` have passed: then it is
dead (logged, counted, shown in ``/healthz``) and the next one of that driver × release goes. The outcome is written
by the writer thread, the only one that writes; the delivery threads only read the outbox. A receiver that hangs or
fails delays only its own hook; the writer never waits for a receiver.

A daemon killed between a receiver's answer and the mark sends that delivery again after its restart, with the same
``X-DriverLog-Delivery`` id: receivers should treat the id as an idempotency key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, urlsplit

from driverlog_daemon.logs import get_logger
from driverlog_daemon.parse.bounds import utc_text
from driverlog_daemon.store import schema
from driverlog_daemon.store.outbox import DeliveryOutcome, headline

if TYPE_CHECKING:
    from concurrent.futures import Future

    from driverlog_daemon.config import WebhookConfig

log = get_logger("driverlog.webhooks")

USER_AGENT = "driverlog-daemon webhook"
EXCERPT = 200  # characters of a failing answer's body kept for the log


# ------------------------------------------------------------------------------------------------- what is sent


def slack_body(body_json: str) -> str:
    """The delivery as a Slack or Mattermost incoming-webhook message."""
    body = json.loads(body_json)
    t = body["transition"]
    line = headline(body)
    if body["type"] == "retraction":
        line = f"Withdrawn (later data changed the history): {line}"
    where = f"change {t['change_number']}, patch set {t['patch_set']}"

    def escape(text: str) -> str:  # Slack's own escaping: a name from the registry must not become markup
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    link = f"<{escape(t['review_url'])}|{where}>" if t.get("review_url") else where
    text = f"{escape(line)} ({link}, {utc_text(t['at'], '%Y-%m-%d %H:%M UTC')})"
    return json.dumps({"text": text}, ensure_ascii=False)


def signature(secret: bytes, body: bytes) -> str:
    """``X-DriverLog-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the raw body with the hook's secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# -------------------------------------------------------------------------------------------------- delivering


class Delivery(NamedTuple):
    id: int
    kind: str
    transition_id: str
    body: str
    attempts: int
    queued_at: float
    next_attempt_at: float

    @property
    def delivery_id(self) -> str:
        """``X-DriverLog-Delivery``: the same for every attempt of this delivery."""
        return f"{self.id}-{self.transition_id}"


class Reply(NamedTuple):
    status: int | None  # None: no HTTP answer
    error: str  # "" when delivered


_NEXT = """
    SELECT id, kind, transition_id, body, attempts, queued_at, next_attempt_at FROM webhook_outbox o
    WHERE hook = ? AND delivered_at IS NULL AND dead_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM webhook_outbox p
                      WHERE p.hook = o.hook AND p.driver_id = o.driver_id AND p.release = o.release
                        AND p.delivered_at IS NULL AND p.dead_at IS NULL AND p.id < o.id)
    ORDER BY next_attempt_at, id LIMIT 1"""


class Deliverer:
    """One hook's delivery thread."""

    def __init__(self, hook: WebhookConfig, secret: bytes, database: str,
                 report: Callable[[DeliveryOutcome], Future[None]], *,
                 counted: Callable[[str, str], None] = lambda hook, outcome: None,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] | None = None,
                 poll_seconds: float = 0.5, report_timeout: float = 30.0) -> None:
        if rng is None:
            import random  # here: the writer (and replay) import this module for the outbox, never for sending

            rng = random.random
        self.hook, self._secret, self.database = hook, secret, database
        self.report, self.report_timeout = report, report_timeout
        self.counted, self.clock, self.rng, self.poll_seconds = counted, clock, rng, poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"webhook {self.hook.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.hook.timeout_seconds + 2 if timeout is None else timeout)

    def _run(self) -> None:
        conn = schema.connect(self.database, readonly=True)  # it reads; the writer writes what it reports
        try:
            while not self._stop.is_set():
                try:
                    waited = self._step(conn)
                except sqlite3.Error as exc:  # the database busy past the timeout, or failing: try again later
                    log.warning("webhook_database_error", hook=self.hook.name, error=str(exc))
                    waited = 1.0
                except Exception as exc:  # a bug must not end the hook's deliveries: say so, go on
                    log.error("webhook_error", hook=self.hook.name, error=f"{type(exc).__name__}: {exc}")
                    waited = 1.0
                if waited:
                    self._wake.wait(waited)
                    self._wake.clear()
        finally:
            conn.close()

    def _step(self, conn: sqlite3.Connection) -> float:
        """Deliver the next due delivery, if any; return how long to wait before looking again (0: at once)."""
        row = conn.execute(_NEXT, (self.hook.name,)).fetchone()
        if row is None:
            return self.poll_seconds
        delivery = Delivery(*row)
        now = self.clock()
        if delivery.next_attempt_at > now:
            return min(self.poll_seconds, delivery.next_attempt_at - now)
        try:
            reply = self.post(delivery)
        except Exception as exc:  # a body that cannot be sent is a failed attempt, retried until dead like others
            reply = Reply(None, f"{type(exc).__name__}: {exc}"[:EXCERPT])
        self._report(conn, delivery, reply)
        return 0.0

    def post(self, delivery: Delivery) -> Reply:
        """One attempt: POST the body, signed; any 2xx is delivered. Redirects are not followed."""
        import http.client  # here: with ssl and email, megabytes that only a process that delivers needs

        body = (delivery.body if self.hook.format == "json" else slack_body(delivery.body)).encode("utf-8")
        parts = urlsplit(self.hook.url)
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.hostname or "", parts.port, timeout=self.hook.timeout_seconds)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request("POST", path, body=body, headers={
                "Content-Type": "application/json", "User-Agent": USER_AGENT,
                "X-DriverLog-Delivery": delivery.delivery_id, "X-DriverLog-Event": delivery.kind,
                "X-DriverLog-Signature": signature(self._secret, body)})
            response = connection.getresponse()
            response.read(EXCERPT)  # read before the close, but never kept (see below)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # (ValueError: a URL http.client refuses)
            return Reply(None, self.redacted(f"{type(exc).__name__}: {exc}")[:EXCERPT])
        finally:
            connection.close()
        if 200 <= response.status < 300:
            return Reply(response.status, "")
        if 300 <= response.status < 400:
            return Reply(response.status, "a redirect (not followed)")
        # The status and its reason phrase, never the body: receivers echo the request path in their error pages
        # (Express's 404 does), and the path may be the secret.
        return Reply(response.status, self.redacted(f"HTTP {response.status} {response.reason}".strip())[:EXCERPT])

    def redacted(self, text: str) -> str:
        """``text`` without the hook URL's path or query, in any of the forms a receiver or a library may echo."""
        parts = urlsplit(self.hook.url)
        secrets = {self.hook.url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.query,
                   parts.path if parts.path not in ("", "/") else ""}
        secrets |= {quote(x, safe="/?=&") for x in secrets} | {repr(x)[1:-1] for x in secrets}
        for secret in sorted((x for x in secrets if len(x) > 1), key=len, reverse=True):
            text = text.replace(secret, "…")
        return text

    def _report(self, conn: sqlite3.Connection, delivery: Delivery, reply: Reply) -> None:
        """Report the attempt's outcome to the writer and wait until it is committed: the next look at the outbox
        must see it (a delivery reported but not committed, in a crash, is sent again: at least once)."""
        now = self.clock()
        attempts = delivery.attempts + 1
        where = {"hook": self.hook.name, "delivery": delivery.delivery_id, "kind": delivery.kind,
                 "attempts": attempts}
        if not reply.error:
            outcome = DeliveryOutcome(delivery.id, attempts, reply.status, None, delivered_at=now)
            kind = "delivered"
            log.info("webhook_delivered", status=reply.status, **where)
        elif now - delivery.queued_at >= self.hook.retry_for_hours * 3600:
            outcome = DeliveryOutcome(delivery.id, attempts, reply.status, reply.error, dead_at=now)
            kind = "dead"
            log.error("webhook_dead", status=reply.status, error=reply.error, url=self.hook.shown(), **where)
        else:
            delay = self.backoff(attempts)
            outcome = DeliveryOutcome(delivery.id, attempts, reply.status, reply.error, next_attempt_at=now + delay)
            kind = "failed"
            log.warning("webhook_failed", status=reply.status, error=reply.error, retry_in=round(delay, 2),
                        url=self.hook.shown(), **where)
        self.report(outcome).result(timeout=self.report_timeout)
        self.counted(self.hook.name, kind)

    def backoff(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failure: doubling from the base up to the cap, then between half and
        all of it at random (jitter: receivers that come back are not hit by every hook at once)."""
        ceiling = min(self.hook.backoff_max_seconds, self.hook.backoff_base_seconds * 2.0 ** min(attempts - 1, 30))
        return ceiling * (0.5 + 0.5 * self.rng())
