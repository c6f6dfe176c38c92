"""The web tier in its own processes: `run` supervising `serve` (gunicorn), `serve` alone, HTTP caching through a
real nginx, slow clients, and one scrape with every metric of both sides. Real processes, real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.store import Batch, Store
from driverlog_daemon.testing import DATA, ROOT, wait_until
from driverlog_daemon.testing.db import read_only_media
from driverlog_daemon.testing.net import free_port, http_get
from driverlog_daemon.testing.site import NOW, merged, vote

get = http_get


def processes_with(marker: str) -> list[int]:
    """The pids whose command line names ``marker`` (a test's own configuration file)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Tier:
    """``driverlog-daemon run`` with no Gerrit (or ``serve`` alone) as a subprocess on a port of its own."""

    def __init__(self, tmp: Path, command: str = "run", port: int = 0, database: Path | None = None,
                 wrap: Sequence[str] = (), **http: object) -> None:
        self.tmp, self.command, self.wrap = tmp, command, list(wrap)
        self.db = database or tmp / "d.sqlite"
        self.config = tmp / f"driverlog-{command}.toml"
        more = "".join(f"{k} = {json.dumps(v)}\n" for k, v in http.items())
        self.config.write_text(f'[registry]\npath = "{DATA}"\n[database]\npath = "{self.db}"\n'
                               f'[http]\nlisten = "127.0.0.1"\nport = {port}\n{more}[log]\nformat = "json"\n')
        self.log_path = tmp / f"{command}.log"
        self.start()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIVERLOG_", "PROMETHEUS_", "NOTIFY_"))}
        env["DRIVERLOG_CACHE_DIR"] = os.environ.get("DRIVERLOG_CACHE_DIR", "")
        self.log = self.log_path.open("a")
        self.proc = subprocess.Popen([*self.wrap, sys.executable, "-m", "driverlog_daemon", self.command, "--config",
                                      str(self.config)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.tmp)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text().splitlines():
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            if e.get("event") == name:
                out.append(e)
        return out

    @property
    def port(self) -> int:
        assert wait_until(lambda: self.events("http_listening") or self.proc.poll() is not None, timeout=20)
        assert self.proc.poll() is None, self.log_path.read_text()
        return int(self.events("http_listening")[-1]["port"])

    def up(self) -> bool:
        try:
            return get(self.port, "/healthz", timeout=2)[0] in (200, 503)
        except OSError:
            return False

    def web_pids(self) -> list[int]:
        return [p for p in processes_with(str(self.config)) if p != self.proc.pid]

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        for pid in processes_with(str(self.config)):  # nothing may outlive a test
            os.kill(pid, signal.SIGKILL)
        return self.proc.returncode


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[Tier]:
    t = Tier(tmp_path, workers=2, threads=8)
    assert wait_until(t.up, timeout=20)
    yield t
    t.stop()


def scrape(port: int) -> dict[str, float]:
    _, _, body = get(port, "/metrics")
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in body.decode().splitlines()
            if line and not line.startswith("#")}


# ------------------------------------------------------------------------------------------- run + serve


def test_run_serves_from_its_own_processes_and_one_scrape_has_both_sides(tier: Tier) -> None:
    assert wait_until(lambda: len(tier.web_pids()) == 3)  # the arbiter and two workers, none of them the daemon
    assert tier.proc.pid not in tier.web_pids()
    assert get(tier.port, "/")[0] == 200 and get(tier.port, "/api/1.0/drivers")[0] == 200
    samples = scrape(tier.port)
    assert samples["driverlog_registry_drivers"] == 14  # set by the daemon
    assert samples['driverlog_http_requests_total{route="/",status="200"}'] == 1  # counted by a web worker
    assert samples['driverlog_http_requests_total{route="/api/1.0/drivers",status="200"}'] == 1
    assert samples["process_resident_memory_bytes"] > 0  # the daemon's process
    assert not any("_created" in name for name in samples)
    status, _, body = get(tier.port, "/healthz")
    assert status == 200 and json.loads(body)["writer"] == "ok"  # the daemon's own view, through the state file
    assert get(tier.port, "/", method="POST")[0] == 405


def test_a_killed_worker_and_a_killed_web_tier_come_back_on_the_same_port(tier: Tier) -> None:
    port = tier.port
    assert wait_until(lambda: len(tier.web_pids()) == 3)
    arbiter = next(p for p in tier.web_pids() if Path(f"/proc/{p}/status").read_text().count(
        f"PPid:\t{tier.proc.pid}\n"))
    worker = next(p for p in tier.web_pids() if p != arbiter)
    os.kill(worker, signal.SIGKILL)  # gunicorn's arbiter replaces its worker
    assert wait_until(lambda: len(tier.web_pids()) == 3 and worker not in tier.web_pids(), timeout=20)
    assert get(port, "/api/1.0/drivers")[0] == 200
    os.kill(arbiter, signal.SIGKILL)  # the daemon's supervisor restarts the whole tier
    assert wait_until(lambda: len(tier.events("web_tier_started")) == 2, timeout=20)
    assert wait_until(lambda: len(tier.web_pids()) == 3 and arbiter not in tier.web_pids(), timeout=20)
    assert wait_until(lambda: tier.up(), timeout=20) and tier.port == port
    assert get(port, "/api/1.0/drivers")[0] == 200
    assert wait_until(lambda: json.loads(get(port, "/healthz")[2]).get("web_tier_restarts") == 1, timeout=10)


def test_sigterm_stops_everything_and_kill_9_leaves_nothing_behind(tmp_path: Path) -> None:
    port = free_port()
    t = Tier(tmp_path, port=port, workers=2, threads=4)
    try:
        assert wait_until(t.up, timeout=20)
        assert t.stop() == 0
        assert processes_with(str(t.config)) == []  # SIGTERM: the daemon and its web tier are gone
        t.start()
        assert wait_until(t.up, timeout=20)
        os.kill(t.proc.pid, signal.SIGKILL)
        t.proc.wait()
        assert wait_until(lambda: processes_with(str(t.config)) == [], timeout=10)  # no orphan web process
        t.start()  # the same port at once
        assert wait_until(t.up, timeout=20)
        assert get(port, "/")[0] == 200
    finally:
        t.stop()


def test_serve_alone_reads_a_file_another_process_writes(tmp_path: Path, registry: Registry) -> None:
    store = Store(tmp_path / "d.sqlite")
    store.sync_drivers(registry)
    t = Tier(tmp_path, command="serve", workers=1, threads=4, max_staleness_seconds=0.5)
    try:
        assert wait_until(t.up, timeout=20)
        status, _, body = get(t.port, "/healthz")
        assert status == 200 and "serve only" in json.loads(body)["writer"]
        fc = "Acme Volume Driver (FC)"
        driver_id = next(r["id"] for r in json.loads(get(t.port, "/api/1.0/drivers?release_id=gazpacho")[2])[
            "drivers"] if r["name"] == fc)
        assert json.loads(get(t.port, f"/api/1.0/drivers/{driver_id}")[2])["driver"]["latest"] is None
        store.commit(Batch("stream", [vote(registry, fc, 100, 2, NOW - 60, "success", "Gazpacho")],
                           changes=[merged(100, 2, NOW - 30)]))
        assert wait_until(lambda: json.loads(get(t.port, f"/api/1.0/drivers/{driver_id}")[2])["driver"][
            "releases"]["gazpacho"].get("ci_result") is True, timeout=10)
        labels = '{driver="Acme Volume Driver (FC)",project="openstack/cinder",vendor="Acme Storage"}'
        samples = scrape(t.port)  # the health gauges, read from the file by the web tier
        assert samples[f"driverlog_driver_pass_ratio_30d{labels}"] == 1.0
        assert samples[f"driverlog_driver_coverage_ratio_30d{labels}"] == 1.0
        assert samples["driverlog_drivers_at_risk"] == 0  # unknown: nothing proves the file complete
        assert samples[f'driverlog_driver_last_verification_timestamp_seconds{{ci_account="acme-storage-ci",'
                       f'{labels[1:]}'] == NOW - 60
        # a history import under way, as the writer would plan it: the header and the gauges say so
        from driverlog_daemon.model import WINDOW, Work
        from driverlog_daemon.store import import_ledger
        from driverlog_daemon.store.import_ledger import Plan

        with store.transaction():
            import_ledger.plan(store.conn, Plan("first", NOW - 90 * 86400, None, (
                Work("account", "acme-storage-ci", (1, 2), WINDOW),)), None, time.time())
        assert wait_until(lambda: b"importing history: 0 of 2 bindings" in get(t.port, "/")[2], timeout=10)
        samples = scrape(t.port)
        assert samples["driverlog_history_import_bindings"] == 2
        assert samples["driverlog_history_import_bindings_done"] == 0
        for method in ("POST", "PUT", "DELETE"):  # and the database is opened read-only underneath
            assert get(t.port, "/api/1.0/drivers", method=method)[0] == 405
        assert store.conn.execute("SELECT count(*) FROM verifications").fetchone()[0] == 1
    finally:
        t.stop()
        store.close()


# ------------------------------------------------------------------------------------------ HTTP caching


def test_answers_carry_cache_headers_and_a_validator_per_representation(tier: Tier) -> None:
    status, headers, _ = get(tier.port, "/api/1.0/drivers")
    assert status == 200 and headers["cache-control"] == "public, max-age=5, stale-while-revalidate=30"
    plain = headers["etag"]
    _, gz_headers, _ = get(tier.port, "/api/1.0/drivers", {"Accept-Encoding": "gzip"})
    assert gz_headers["content-encoding"] == "gzip" and gz_headers["etag"] != plain
    assert get(tier.port, "/api/1.0/drivers", {"Accept-Encoding": "gzip", "If-None-Match": gz_headers["etag"]}
               )[0] == 304
    assert get(tier.port, "/api/1.0/drivers", {"If-None-Match": plain})[0] == 304
    for path in ("/healthz", "/metrics"):
        assert get(tier.port, path)[1]["cache-control"] == "no-cache", path


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def test_nginx_in_front_answers_from_its_cache(tmp_path: Path, registry: Registry) -> None:
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian's nginx package; .ci/run installs it)")
    with Store(tmp_path / "d.sqlite") as store:
        store.sync_drivers(registry)
    origin = Tier(tmp_path, command="serve", workers=2, threads=8)
    front = free_port()
    conf = (ROOT / "deploy" / "nginx" / "driverlog.conf").read_text()
    conf = (conf.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{origin.port};")
            .replace("listen 80;", f"listen 127.0.0.1:{front};")
            .replace("/var/cache/nginx/driverlog", str(tmp_path / "cache")))
    (tmp_path / "driverlog.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(f"""
worker_processes 1;
{"user root;" if os.getuid() == 0 else ""}
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/driverlog.conf;
}}
""")
    nginx = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                             stderr=subprocess.PIPE)
    try:
        assert wait_until(origin.up, timeout=20)
        assert wait_until(lambda: _reachable(front), timeout=10), (tmp_path / "nginx-error.log").read_text()
        routes = ["/", "/api/1.0/drivers", "/badge/1.svg"]
        before = scrape(origin.port)
        stop = time.monotonic() + 5
        answered: list[int] = []

        def client(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
            k = 0
            while time.monotonic() < stop:
                conn.request("GET", routes[(i + k) % len(routes)], headers={"Accept-Encoding": "gzip"})
                r = conn.getresponse()
                r.read()
                answered.append(r.status)
                k += 1
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        after = scrape(origin.port)
        assert set(answered) == {200} and len(answered) > 100
        for route in ("/", "/api/1.0/drivers", "/badge/<id>.svg"):
            key = f'driverlog_http_requests_total{{route="{route}",status="200"}}'
            seen = after.get(key, 0) - before.get(key, 0)
            print(f"{route}: {seen:.0f} origin requests for {len(answered)} answers in 5 s")
            assert 1 <= seen <= 3, (route, seen)  # one per max-age (5 s) at most, give or take a refresh
        _, headers, _ = get(front, "/api/1.0/drivers", {"Accept-Encoding": "gzip"})
        assert headers["x-cache-status"] in ("HIT", "UPDATING", "STALE", "REVALIDATED")
        assert headers["content-encoding"] == "gzip"  # passed through as the web tier made it
        assert get(front, "/api/1.0/drivers", method="POST")[0] == 403  # only GET and HEAD pass
    finally:
        nginx.terminate()
        nginx.wait(10)
        origin.stop()


def _reachable(port: int) -> bool:
    try:
        return get(port, "/healthz", timeout=2)[0] == 200
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ slow clients


def test_slow_clients_do_not_hold_the_workers_hostage(tmp_path: Path) -> None:
    Store(tmp_path / "d.sqlite").close()
    t = Tier(tmp_path, command="serve", workers=2)  # the shipped threads and client timeout
    hostile: list[socket.socket] = []
    try:
        assert wait_until(t.up, timeout=20)
        port = t.port
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", port))
            if i % 2:  # trickles its request, a byte at a time
                s.sendall(b"G")
            else:  # asks for the biggest answer and never reads it
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                request = b"GET /api/1.0/drivers?release_id=" + ",".join(["gazpacho"] * 8).encode()
                s.sendall((request + b" HTTP/1.1\r\nHost: x\r\n\r\n") * 20 + b"GET / HTTP/1.1\r\nHost")
            hostile.append(s)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.5):
                for s in hostile[1::2]:
                    try:
                        s.sendall(b"E")
                    except OSError:
                        pass

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        latencies: list[float] = []
        errors: list[str] = []

        def normal() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)  # less than a slow client's time
            for _ in range(25):
                started = time.monotonic()
                try:
                    conn.request("GET", "/api/1.0/drivers", headers={"Accept-Encoding": "gzip"})
                    r = conn.getresponse()
                    r.read()
                    assert r.status == 200
                except (OSError, AssertionError) as exc:
                    errors.append(repr(exc))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
                latencies.append(time.monotonic() - started)
            conn.close()

        clients = [threading.Thread(target=normal) for _ in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        stop.set()
        latencies.sort()
        print(f"8 clients beside 50 slow ones: {len(latencies)} answers, p50 {statistics.median(latencies) * 1000:.1f}"
              f" ms, p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms")
        assert errors == []
    finally:
        for s in hostile:
            s.close()
        t.stop()


def test_exports_have_a_deadline_in_all_and_only_a_few_run_at_once(tmp_path: Path, registry: Registry) -> None:
    with Store(tmp_path / "d.sqlite") as store:
        store.sync_drivers(registry)
        store.commit(Batch("stream", [vote(registry, "Acme Volume Driver (FC)", 10_000 + i, 1, NOW - i, "success",
                                           "Gazpacho", evidence="- job https://ci/x : SUCCESS " + "x" * 150)
                                      for i in range(20_000)]))  # a CSV of ~5 MB: more than any socket buffers
    t = Tier(tmp_path, command="serve", workers=1, client_timeout_seconds=1, export_timeout_seconds=2,
             max_exports=2)
    request = b"GET /export/verifications.csv HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        assert wait_until(t.up, timeout=20)
        port = t.port
        slow: list[socket.socket] = []
        for _ in range(2):  # they read a little now and then: each part they take would once renew the deadline
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(request)
            slow.append(s)
        assert wait_until(lambda: get(port, "/export/marks.csv")[0] == 503)  # a third waits its turn
        status, headers, _ = get(port, "/export/marks.csv")
        assert status == 503 and headers["retry-after"] == "5"
        def slow_reader(s: socket.socket) -> None:  # ~300 KB/s: each part within a second, the whole in ~15 s
            s.settimeout(5)
            try:
                while s.recv(16384):
                    time.sleep(0.05)
            except OSError:
                pass

        readers = [threading.Thread(target=slow_reader, args=(s,), daemon=True) for s in slow]
        for r in readers:
            r.start()
        # cut at the export deadline, 2 s from its start (each part taken once renewed it): the server says so
        # (what its kernel had buffered still drains to the client afterwards)
        assert wait_until(lambda: len(t.events("client_cut")) >= 2, timeout=15)
        cuts = [e["seconds"] for e in t.events("client_cut")]
        print("exports cut after", cuts, "s")
        assert all(1.5 <= c < 4 for c in cuts), cuts
        assert wait_until(lambda: get(port, "/export/marks.csv")[0] == 200)  # their places are free again
        assert "Traceback" not in t.log_path.read_text()  # one line each, no traceback
        for s in slow:
            s.close()
    finally:
        t.stop()


def test_clients_trickling_their_request_hold_no_thread(tmp_path: Path) -> None:
    Store(tmp_path / "d.sqlite").close()
    t = Tier(tmp_path, command="serve", workers=1, threads=4)  # far fewer threads than trickling clients
    hostile: list[socket.socket] = []
    try:
        assert wait_until(t.up, timeout=20)
        port = t.port
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HT")  # and the rest never comes in time
            hostile.append(s)
        for _ in range(20):  # each answered at once, though every thread would be held for 10 s otherwise
            status, _, _ = get(port, "/api/1.0/drivers", timeout=3)
            assert status == 200
        for s in hostile:  # they still get their answer once their head is whole
            s.sendall(b"TP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for s in hostile:
            s.settimeout(5)
            assert s.recv(12).startswith(b"HTTP/1.1 200")
    finally:
        for s in hostile:
            s.close()
        t.stop()


def test_the_web_tier_writes_one_log_format(tmp_path: Path) -> None:
    Store(tmp_path / "d.sqlite").close()
    t = Tier(tmp_path, command="serve", workers=1)
    try:
        assert wait_until(t.up, timeout=20)
    finally:
        t.stop()
    lines = [line for line in t.log_path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # gunicorn's own lines too: JSON, not "[date] [pid] [INFO] …"
    assert any(e["event"] == "gunicorn" and "Booting worker" in e["message"] for e in events), lines


def test_serve_alone_reads_a_copy_on_read_only_media(tmp_path: Path, registry: Registry) -> None:
    media = tmp_path / "media"
    media.mkdir()
    with Store(media / "d.sqlite") as store:
        store.sync_drivers(registry)
    wrap = read_only_media(media)
    if wrap is None:
        pytest.skip("cannot mount a folder read-only here (needs `unshare -m` as root, or user namespaces)")
    t = Tier(tmp_path, command="serve", workers=1, database=media / "d.sqlite", wrap=wrap)
    try:
        assert wait_until(t.up, timeout=20), t.log_path.read_text()
        status, _, body = get(t.port, "/api/1.0/drivers?release_id=gazpacho,flamingo,zed")
        page = get(t.port, "/")[0]
    finally:
        t.stop()
    assert status == 200 and page == 200 and len(json.loads(body)["drivers"]) > 1
    assert [p.name for p in media.iterdir()] == ["d.sqlite"]


def test_serve_alone_shows_the_stream_the_file_recorded(tmp_path: Path, registry: Registry) -> None:
    with Store(tmp_path / "d.sqlite") as store:
        store.sync_drivers(registry)
        store.commit(Batch("stream", [], cursor=("review.example.org:29418", NOW - 120)))
        store.open_gap("review.example.org:29418", NOW - 60, "reconnect")
    t = Tier(tmp_path, command="serve", workers=1)
    try:
        assert wait_until(t.up, timeout=20)
        page = get(t.port, "/")[2].decode()
    finally:
        t.stop()
    assert "Gerrit: review.example.org:29418, as the file says (no daemon here" in page, page[:2000]
    assert "Gerrit: not configured" not in page and "none yet" not in page
