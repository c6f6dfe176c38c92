"""Webhooks over real HTTP: the outbox filled in the transaction that records a transition, a delivery thread, and
a receiver of our own on 127.0.0.1 that goes down, answers 500 and hangs. (The fault suite adds ``kill -9``.)"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from driverlog_daemon.cli import main
from driverlog_daemon.config import ConfigError, WebhookConfig, build_config, load_config
from driverlog_daemon.expose.webhooks import Deliverer, slack_body
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store import reads
from driverlog_daemon.store.pipeline import Pipeline
from driverlog_daemon.store.store import Batch, BatchResult, Store
from driverlog_daemon.store.writer import Writer
from driverlog_daemon.testing import wait_until
from driverlog_daemon.testing.db import query, released_file, write_merged_history
from driverlog_daemon.testing.receiver import Receiver, check
from driverlog_daemon.testing.site import driver, merged, vote

SECRET = b"s3cret-for-tests"
FC, ISCSI, NOVA = "Acme Volume Driver (FC)", "Acme Volume Driver (iSCSI)", "Hooli Hypervisor Driver"
T0 = 1_790_000_000


def hook(url: str, **more: Any) -> WebhookConfig:
    values: dict[str, Any] = {"name": "test", "url": url, "secret_file": "/dev/null", "timeout_seconds": 0.3,
                              "backoff_base_seconds": 0.02, "backoff_max_seconds": 0.2, **more}
    return WebhookConfig(**values)


class Hooked:
    """A fresh database on the real clock (deliveries are due by the delivery thread's clock), built with its hooks,
    and the writer thread that alone writes it, as in the daemon: the tests' batches and the deliveries' outcomes
    both go through it."""

    def __init__(self, path: Path, registry: Registry, hooks: tuple[WebhookConfig, ...]) -> None:
        self.store = Store(path, webhooks=hooks)
        self.webhooks = hooks
        self.path = self.store.path
        self.writer = Writer(Pipeline(registry, self.store))
        self.writer.start()

    def commit(self, batch: Batch) -> BatchResult:
        return self.writer.put_batch(batch).result(timeout=10)

    def deliverer(self, h: WebhookConfig, *, start: bool = True, **more: Any) -> Deliverer:
        d = Deliverer(h, SECRET, self.path, self.writer.record_delivery, poll_seconds=0.02, **more)
        if start:
            d.start()
        return d

    @property
    def ids(self) -> dict[tuple[str, str, str], int]:
        return dict(self.store.driver_ids)

    def close(self) -> None:
        self.writer.stop()
        self.store.close()


@pytest.fixture
def hooked(tmp_path: Path, registry: Registry) -> Iterator[Callable[..., Hooked]]:
    """``hooked(*hooks)``: a :class:`Hooked` database with these webhooks."""
    made: list[Hooked] = []

    def make(*hooks: WebhookConfig) -> Hooked:
        made.append(Hooked(tmp_path / f"d{len(made)}.sqlite", registry, hooks))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET)
    yield r
    r.close()


def flips(registry: Registry, store: Hooked | Store, name: str, number: int, results: list[str],
          release: str = "Gazpacho", project: str = "openstack/cinder") -> None:
    """One merged change a result, in time order: each flip of the result is a transition."""
    for i, result in enumerate(results):
        t = T0 + 1000 * (number + i)
        store.commit(Batch("stream", [vote(registry, name, number + i, 1, t, result, release)],
                           changes=[merged(number + i, 1, t + 10, project)]))


def outbox(store: Hooked | Store) -> list[tuple[Any, ...]]:
    return query(store.path, "SELECT hook, kind, transition_id, delivered_at IS NOT NULL, dead_at IS NOT NULL "
                             "FROM webhook_outbox ORDER BY id")


def history(store: Hooked | Store) -> dict[str, tuple[Any, ...]]:
    return {r[0]: r for r in query(store.path, "SELECT * FROM mark_transitions")}


# -------------------------------------------------------------------------------------------- the outbox


def test_each_transition_is_queued_in_the_transaction_that_records_it(hooked: Callable[..., Hooked],
                                                                      registry: Registry) -> None:
    store = hooked(hook("http://127.0.0.1:9/", name="all"), hook("http://127.0.0.1:9/", name="hooli",
                                                                 vendor=("Hooli",)))
    flips(registry, store, FC, 10, ["success", "success", "failure"])
    flips(registry, store, NOVA, 20, ["failure"], project="openstack/nova")
    queued = outbox(store)
    transitions = history(store)
    assert len(transitions) == 3  # FC: none → passing → failing; Hooli: none → failing
    assert sorted(r[2] for r in queued if r[0] == "all") == sorted(transitions)
    assert [r[2] for r in queued if r[0] == "hooli"] == [
        i for i, t in transitions.items() if t[1] == store.ids[("openstack/nova", "Hooli", NOVA)]]
    assert {r[1] for r in queued} == {"transition"}


def test_a_transition_later_data_removes_is_queued_as_a_retraction(hooked: Callable[..., Hooked],
                                                                   registry: Registry) -> None:
    store = hooked(hook("http://127.0.0.1:9/"))
    flips(registry, store, FC, 10, ["success"])
    flips(registry, store, FC, 30, ["failure"])
    (flip,) = [i for i, t in history(store).items() if t[3] == "success"]  # success → failure
    # late: a success after that failure, on a change that merged before the failing one: no flip at that time
    store.commit(Batch("backfill", [vote(registry, FC, 50, 1, T0 + 1000 * 30 + 5, "success", "Gazpacho")],
                       changes=[merged(50, 1, T0 + 1000 * 30 + 6)]))
    assert flip not in history(store)
    assert [r[1:3] for r in outbox(store)][-1] == ("retraction", flip)


# ------------------------------------------------------------------------------------------- delivering


def test_every_transition_arrives_signed_and_in_order_while_the_receiver_misbehaves(
        hooked: Callable[..., Hooked], registry: Registry, receiver: Receiver) -> None:
    h = hook(receiver.url)
    store = hooked(h)
    receiver.down()  # down for a while: connection refused
    d = store.deliverer(h)
    try:
        flips(registry, store, FC, 10, ["success", "failure", "success"])
        flips(registry, store, ISCSI, 10, ["failure", "success"])
        assert wait_until(lambda: query(store.path, "SELECT sum(attempts) FROM webhook_outbox")[0][0] >= 3)
        receiver.up()
        receiver.mode = "error"  # then 500s
        assert wait_until(lambda: any(r.answered == 500 for r in receiver.deliveries()))
        receiver.mode, receiver.hang_seconds = "hang", 1.0  # then hanging past the 0.3 s timeout
        assert wait_until(lambda: receiver.holding >= 1)
        flips(registry, store, FC, 40, ["failure"])  # more while it hangs
        receiver.mode = "ok"
        assert wait_until(lambda: all(r[3] for r in outbox(store)), timeout=20)
    finally:
        d.stop()
    got = receiver.deliveries()
    assert check(got, history(store)) == []
    assert len(got) > len(history(store))  # retries reached the receiver: the same ids, the same bodies
    first: dict[str, Any] = {}
    for r in got:
        first.setdefault(r.delivery_id, r)
    for key in {(r.body["driver"]["id"], r.body["transition"]["release"]) for r in got}:
        times = [r.body["transition"]["at"] for r in first.values()
                 if (r.body["driver"]["id"], r.body["transition"]["release"]) == key]
        assert times == sorted(times), key  # per driver × release, in order of their time
    sample = first[min(first)]
    assert sample.body["type"] == "transition" and set(sample.body) == {"type", "transition", "driver"}
    assert set(sample.body["transition"]) == {"id", "release", "from", "to", "at", "change_number", "patch_set",
                                              "comment_time", "review_url", "cause"}
    assert sample.body["transition"]["cause"] in ("verification", "merge")
    assert set(sample.body["driver"]) == {"id", "project_id", "vendor", "name"}
    wanted = "sha256=" + hmac.new(SECRET, sample.raw, hashlib.sha256).hexdigest()
    assert sample.signature == wanted  # docs/notifications.md's recipe, computed here, gives the header the daemon sent
    assert all(r.signature_ok for r in got)


def test_a_failing_hook_only_delays_itself(hooked: Callable[..., Hooked], registry: Registry,
                                           receiver: Receiver) -> None:
    stuck = Receiver(SECRET, mode="hang", hang_seconds=30.0)
    try:
        store = hooked(hook(stuck.url, name="stuck"), hook(receiver.url, name="fine"))
        ds = [store.deliverer(h) for h in store.webhooks]
        flips(registry, store, FC, 10, ["success", "failure"])
        assert wait_until(lambda: len(receiver.deliveries()) == 2, timeout=5)
        assert wait_until(lambda: stuck.holding >= 1)  # (its thread may look a moment later than the other's)
        assert not stuck.deliveries()
    finally:
        for d in ds:
            d.stop(0.5)
        stuck.close()


def test_a_delivery_is_dead_after_its_retry_time_and_the_next_one_goes(
        hooked: Callable[..., Hooked], registry: Registry, receiver: Receiver) -> None:
    counted: list[tuple[str, str]] = []
    h = hook(receiver.url, retry_for_hours=0.5 / 3600)
    store = hooked(h)
    receiver.mode = "error"
    d = store.deliverer(h, start=False, counted=lambda hook, outcome: counted.append((hook, outcome)))
    with capture_logs() as logs:
        d.start()
        try:
            flips(registry, store, FC, 10, ["success"])
            assert wait_until(lambda: ("test", "dead") in counted, timeout=10)
            receiver.mode = "ok"
            flips(registry, store, FC, 20, ["failure"])
            assert wait_until(lambda: ("test", "delivered") in counted, timeout=10)
        finally:
            d.stop()
    assert [r[3:] for r in outbox(store)] == [(0, 1), (1, 0)]
    state = reads.webhook_outbox(__import__("sqlite3").connect(store.path), time.time())
    assert state["test"]["dead"] == 1 and state["test"]["delivered"] == 1 and state["test"]["pending"] == 0
    dead = [e for e in logs if e["event"] == "webhook_dead"]
    assert dead and dead[0]["error"] == "HTTP 500 Internal Server Error" and dead[0]["url"] == "http://127.0.0.1:" + \
        f"{receiver.port}/…"  # no path, no query: a Slack URL's path is its credential
    assert not any(SECRET.decode() in repr(e) or "token=x" in repr(e) for e in logs)


def test_a_receiver_that_echoes_the_path_never_gets_the_secret_into_logs_or_the_file(
        hooked: Callable[..., Hooked], registry: Registry, receiver: Receiver) -> None:
    receiver.mode = "echo"
    secret_url = receiver.url.replace("/hooks/driverlog", "/hooks/T0SECRET/B0SECRET")
    h = hook(secret_url, retry_for_hours=1.0)
    store = hooked(h)
    d = store.deliverer(h, start=False)
    with capture_logs() as logs:
        d.start()
        try:
            flips(registry, store, FC, 10, ["success"])
            assert wait_until(lambda: len(receiver.deliveries()) >= 2, timeout=10)  # failed, then retried
        finally:
            d.stop()
    failed = [e for e in logs if e["event"] == "webhook_failed"]
    assert failed and failed[0]["error"] == "HTTP 404 Not Found: …"  # the status and the reason, redacted
    errors = query(store.path, "SELECT last_error FROM webhook_outbox")
    assert [e[0] for e in errors] == ["HTTP 404 Not Found: …"]  # stored as logged: no body, no path
    assert not any("SECRET" in repr(e) or "token=x" in repr(e) for e in logs)


def test_redirects_are_not_followed(hooked: Callable[..., Hooked], registry: Registry, tmp_path: Path) -> None:
    from driverlog_daemon.testing.http import ThreadedServer

    hits: list[str] = []

    def redirecting(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        hits.append(environ["PATH_INFO"])
        start_response("307 Temporary Redirect", [("Location", "http://127.0.0.1:9/elsewhere")])
        return [b""]

    web = ThreadedServer(redirecting)
    web.start()
    try:
        h = hook(f"http://127.0.0.1:{web.port}/in")
        store = hooked(h)
        d = store.deliverer(h, start=False)
        flips(registry, store, FC, 10, ["success"])
        row = query(store.path, "SELECT id, kind, transition_id, body, attempts, queued_at, next_attempt_at "
                                "FROM webhook_outbox")[0]
        from driverlog_daemon.expose.webhooks import Delivery

        answer = d.post(Delivery(*row))
    finally:
        web.stop()
    assert answer.status == 307 and answer.error == "a redirect (not followed)" and hits == ["/in"]


def test_the_slack_format_is_one_escaped_line(hooked: Callable[..., Hooked], registry: Registry,
                                             receiver: Receiver) -> None:
    h = hook(receiver.url, format="slack")
    store = hooked(h)
    flips(registry, store, FC, 10, ["success"])
    d = store.deliverer(h)
    try:
        assert wait_until(lambda: receiver.deliveries())
    finally:
        d.stop()
    (got,) = receiver.deliveries()
    assert got.signature_ok and set(got.body) == {"text"}
    assert got.body["text"].startswith("Acme Volume Driver (FC), Gazpacho: no mark → passing (<https://")
    hostile = json.dumps({"type": "transition", "driver": {"name": "<!channel> & co"}, "transition": {
        "release": "gazpacho", "from": None, "to": "failure", "at": T0, "change_number": 1, "patch_set": 1,
        "review_url": "https://x/<y>"}})
    assert "<!channel>" not in json.loads(slack_body(hostile))["text"]


# ---------------------------------------------------------------------------------------- configuration


def test_webhook_tables_are_checked_key_by_key(tmp_path: Path) -> None:
    good = {"url": "https://hooks.example.org/x", "secret_file": "/run/secret"}
    config = build_config({"webhook": [good, {**good, "name": "acme", "vendor": "Acme Storage", "format": "slack"}]})
    assert [h.name for h in config.webhooks] == ["webhook-1", "acme"] and config.webhooks[1].vendor == (
        "Acme Storage",)
    for table, key in (({**good, "url": "file:///etc/passwd"}, "webhook[0].url"),
                       ({**good, "url": "ftp://x/"}, "webhook[0].url"),
                       ({**good, "url": "https://user:pass@hooks.example.org/x"}, "webhook[0].url"),
                       ({**good, "url": "https://hooks.example.org/T0 SECRET"}, "webhook[0].url"),
                       ({"url": good["url"]}, "webhook[0].secret_file"),
                       ({**good, "secret_credential": "x"}, "webhook[0].secret_file"),
                       ({**good, "format": "xml"}, "webhook[0].format"),
                       ({**good, "retries": 3}, "webhook[0].retries"),
                       ({**good, "timeout_seconds": 0}, "webhook[0].timeout_seconds")):
        with pytest.raises(ConfigError) as info:
            build_config({"webhook": [table]})
        assert info.value.key == key, table
    with pytest.raises(ConfigError) as info:
        build_config({"webhook": [{**good, "name": "a"}, {**good, "name": "a"}]})
    assert info.value.key == "webhook[1].name"


def test_check_config_never_shows_the_secret_or_the_urls_path(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do-not-print-me\n")
    cfg = tmp_path / "driverlog.toml"
    cfg.write_text(f'[database]\npath = "{tmp_path / "d.sqlite"}"\n\n[[webhook]]\nname = "chat"\nformat = "slack"\n'
                   f'url = "https://hooks.slack.example/services/T0/B0/XYZ"\nsecret_file = "{secret}"\n')
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "[[webhook]]" in out and 'url = "https://hooks.slack.example/…"' in out
    assert "do-not-print-me" not in out and "XYZ" not in out
    secret.unlink()
    with pytest.raises(ConfigError) as info:
        from driverlog_daemon.config_checks import check_files

        check_files(load_config(cfg))
    assert info.value.key == "webhook chat.secret"


def test_a_version_4_file_gains_the_outbox_and_keeps_its_rows(tmp_path: Path, registry: Registry) -> None:
    from driverlog_daemon.store import schema

    path = tmp_path / "v4.sqlite"
    conn = released_file(path, 4)
    write_merged_history(conn, driver(registry, FC), [(1, T0, "success", T0), (2, T0 + 500, "failure", T0 + 500)])
    before = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("verifications", "changes", "mark_candidates", "drivers")}
    conn.close()
    with Store(path, webhooks=(hook("http://127.0.0.1:9/"),)) as s:  # hooks from the start: the upgrade sends none
        assert schema.schema_version(s.conn) == schema.SCHEMA_VERSION
        assert [n for v, n, _ in schema.applied(s.conn) if v >= 5] == ["webhook_outbox", "merge_candidates_per_batch",
                                                                       "history", "ci_comment_days"]
        assert {t: s.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in before} == before
        assert before["mark_candidates"] == 2 and len(history(s)) == 2  # success, then failure
        assert s.conn.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0] == 0  # history is not news
        flips(registry, s, FC, 30, ["success"])
        assert [r[1] for r in outbox(s)] == ["transition"]
