"""Web benchmark: the web tier (``driverlog-daemon serve``) against its own ceiling and against Datasette.

    python bench/web.py [--verifications N] [--clients 8] [--seconds 10] [--keep]

Builds (fixed seed) a database with N verifications (default 1,000,000) for the upstream registry's 221 drivers
(the shipped one if ../shared is absent), with merges so that marks exist. Then, each served in its own processes
and driven by ``wrk`` (Debian's package: one route at a time, ``--clients`` keep-alive connections, gzip accepted,
``--seconds`` a route; Python client processes when wrk is absent):

1. nothing writing: ours — ``/api/1.0/drivers`` (every release), ``/``, a driver page, a badge — and a bare
   hello-world app on the same server (gunicorn, the same worker class, workers and threads) answering a body of
   the API's gzipped size: the ceiling of this machine, which the app's own cost should vanish next to;
2. while ``driverlog-daemon replay`` ingests a generated recording into the same file: the API and ``/``;
3. Datasette, the ``driver_ci_status`` view as JSON, the same clients.

Prints the time to compute every driver's CI health on that file, requests/s and p50/p99 latency per route and
the peak RSS of each web worker. Figures go into
docs/performance.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from driverlog_daemon.model import ChangeFact, Verification  # noqa: E402
from driverlog_daemon.registry.load import Registry, load_registry  # noqa: E402
from driverlog_daemon.store.store import Batch, Store  # noqa: E402
from driverlog_daemon.testing.net import free_port  # noqa: E402

UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"
SHIPPED = ROOT / "data" / "default_data.json"


def build(db: Path, registry: Registry, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    drivers = [d for d in registry.drivers if d.ci]
    releases = [r.id for r in registry.releases] or [""]
    now = int(time.time())
    batch: list[Verification] = []
    facts: list[ChangeFact] = []
    with Store(db) as store:
        store.sync_drivers(registry)
        for i in range(n):
            d = drivers[rng.randrange(len(drivers))]
            assert d.ci is not None
            number = 100_000 + i // 3
            ps = 1 + i % 3
            t = now - 365 * 86400 + i * (365 * 86400 // n)
            result = "success" if rng.random() < 0.8 else "failure"
            batch.append(Verification(
                d.key, d.ci.account, number, ps, f"{i:064x}", t, result,  # type: ignore[arg-type]
                f"- {d.ci.account}-job https://ci.example.org/{number}/{ps} : {result.upper()} in 1h",
                d.review_project, "master", rng.choice(releases), "NEW",
                f"https://review.example.org/c/{d.review_project}/+/{number}", None))
            if ps == 3 and rng.random() < 0.5:
                facts.append(ChangeFact(number, d.review_project, "master", "MERGED", t + 60, ps, ps, t + 60))
            if len(batch) >= 20_000:
                store.commit(Batch("replay", batch, changes=facts))
                batch, facts = [], []
        store.commit(Batch("replay", batch, changes=facts))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def serve_ours(work: Path, db: Path, registry_path: Path, port: int) -> subprocess.Popen[bytes]:
    config = work / "serve.toml"
    config.write_text(f'[registry]\npath = "{registry_path}"\n[database]\npath = "{db}"\n'
                      f'[http]\nport = {port}\n[log]\nlevel = "warning"\nformat = "json"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIVERLOG_", "PROMETHEUS_"))}
    return subprocess.Popen([sys.executable, "-m", "driverlog_daemon", "serve", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def serve_hello(port: int, body_bytes: int) -> None:
    """A bare WSGI app on the web tier's own server and settings, answering a body of ``body_bytes``."""
    from driverlog_daemon.config import Config, HttpConfig
    from driverlog_daemon.expose.web import server

    body = os.urandom(body_bytes)

    def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    config = Config(http=HttpConfig(port=port))
    options = {k: v for k, v in server.options(config).items() if k not in ("when_ready",)}
    server._Gunicorn({**options, "loglevel": "warning"}, lambda: hello).run()


def workers_memory(parent: int, field: str = "VmHWM") -> dict[int, float]:
    """``field`` of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: RSS now) in MB, of each process whose parent is
    ``parent`` (a gunicorn arbiter's workers), by pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{parent}\n" in status:
                out[int(entry.name)] = int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    return out


def worker_rss(parent: int) -> list[float]:
    """Peak RSS (VmHWM) in MB of the web workers of the arbiter ``parent``."""
    return list(workers_memory(parent).values())


def wait_http(port: int, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing answers on port {port}")


def client(port: int, paths: list[str], seconds: float, out: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: dict[str, list[float]] = {p: [] for p in paths}
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        path = paths[i % len(paths)]
        i += 1
        started = time.perf_counter()
        conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"{path}: {r.status}")
        times[path].append(time.perf_counter() - started)
    out.put(times)


def drive(port: int, paths: list[str], clients: int, seconds: float) -> dict[str, list[float]]:
    queue: multiprocessing.Queue[dict[str, list[float]]] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(port, paths[i:] + paths[:i], seconds, queue))
             for i in range(clients)]
    for p in procs:
        p.start()
    merged: dict[str, list[float]] = {p: [] for p in paths}
    for _ in procs:
        for path, ts in queue.get(timeout=seconds + 120).items():
            merged[path] += ts
    for p in procs:
        p.join()
    return merged


def wrk(port: int, paths: list[str], clients: int, seconds: float) -> dict[str, tuple[float, float, float]]:
    """Each path in turn with ``clients`` keep-alive connections: (requests/s, p50 ms, p99 ms)."""
    out = {}
    for path in paths:
        proc = subprocess.run(["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds:g}s", "--latency",
                               "--timeout", "30s", "-H", "Accept-Encoding: gzip", f"http://127.0.0.1:{port}{path}"],
                              capture_output=True, text=True, check=True)
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout).group(1))  # type: ignore[union-attr]
        p50, p99 = (_ms(re.search(rf"^\s+{q}%\s+([\d.]+\w+)", proc.stdout, re.M).group(1))  # type: ignore[union-attr]
                    for q in ("50", "99"))
        if re.search(r"Non-2xx", proc.stdout):
            raise SystemExit(f"{path}: non-2xx answers\n{proc.stdout}")
        out[path] = (rate, p50, p99)
    return out


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def load(name: str, port: int, paths: list[str], clients: int, seconds: float) -> None:
    if shutil.which("wrk"):
        for path, (rate, p50, p99) in wrk(port, paths, clients, seconds).items():
            print(f"{name:<10} {path[:58]:<58} {rate:>9,.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
    else:
        report(name, drive(port, paths, clients, seconds), seconds)


def report(name: str, times: dict[str, list[float]], seconds: float) -> None:
    for path, ts in times.items():
        ts.sort()
        p50 = statistics.median(ts) * 1000 if ts else float("nan")
        p99 = ts[min(len(ts) - 1, int(len(ts) * 0.99))] * 1000 if ts else float("nan")
        print(f"{name:<10} {path[:58]:<58} {len(ts) / seconds:>9,.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifications", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-ingest", action="store_true", help="no replay writing meanwhile (the ceiling)")
    args = parser.parse_args()
    registry_path = UPSTREAM if UPSTREAM.exists() else SHIPPED
    registry = load_registry(registry_path)
    work = Path(tempfile.mkdtemp(prefix="driverlog-webbench-"))
    db = work / "driverlog.sqlite"
    started = time.perf_counter()
    build(db, registry, args.verifications)
    print(f"registry: {registry_path} ({registry.summary()})")
    print(f"database: {args.verifications:,} verifications, {db.stat().st_size / 1e6:,.0f} MB, "
          f"built in {time.perf_counter() - started:.0f} s; {args.clients} clients "
          f"({'wrk' if shutil.which('wrk') else 'Python processes'}), {args.seconds:g} s a route, "
          f"{os.cpu_count()} CPUs")

    from driverlog_daemon.testing.samples import sample_events

    recording = work / "stream.jsonl"
    with recording.open("w") as f:
        for ev in sample_events(registry, 400_000, seed=9, start=int(time.time()) - 86400):
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    python = sys.executable

    def ingest() -> subprocess.Popen[bytes]:  # a replay writing into the same file while the clients read
        if args.no_ingest:
            return subprocess.Popen(["true"])
        return subprocess.Popen([python, "-m", "driverlog_daemon", "replay", str(recording), "--database", str(db),
                                 "--registry", str(registry_path), "--quiet", "--jobs", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    with Store(db) as s:
        driver_id = s.conn.execute("SELECT driver_id FROM driver_status GROUP BY driver_id "
                                   "ORDER BY sum(verifications) DESC LIMIT 1").fetchone()[0]
    from driverlog_daemon.store import reads_health, schema

    conn = schema.connect(db, readonly=True)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        healths = reads_health.ci_health_of_drivers(conn, time.time(), 14)
        timings.append(time.perf_counter() - started)
    conn.close()
    print(f"CI health of {len(healths)} drivers: {statistics.median(timings) * 1000:.0f} ms (median of 5; "
          f"best {min(timings) * 1000:.0f} ms)")
    every = ",".join(r.id.lower() for r in registry.releases)
    api = f"/api/1.0/drivers?release_id={every}"
    port = free_port()
    ours = serve_ours(work, db, registry_path, port)
    try:
        wait_http(port, "/")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", api, headers={"Accept-Encoding": "gzip"})
        api_gzipped = len(conn.getresponse().read())
        conn.close()
        print(f"\nnothing writing (the API's answer: {api_gzipped:,} bytes gzipped)")
        load("ours", port, [api, "/", f"/drivers/{driver_id}", f"/badge/{driver_id}.svg"], args.clients,
             args.seconds)
        print("peak RSS per web worker: " + ", ".join(f"{mb:.0f} MB" for mb in worker_rss(ours.pid)))
        if not args.no_ingest:
            print("\nwhile a replay writes into the same file")
            writer = ingest()
            try:
                load("ours", port, [api, "/"], args.clients, args.seconds)
            finally:
                writer.terminate()
                writer.wait()
    finally:
        ours.terminate()
        ours.wait(10)
    hello_port = free_port()
    hello = multiprocessing.Process(target=serve_hello, args=(hello_port, api_gzipped))
    hello.start()
    try:
        wait_http(hello_port, "/")
        print("\nthe ceiling: the same server and settings, a bare app, a body of the same size")
        load("hello", hello_port, ["/"], args.clients, args.seconds)
    finally:
        os.kill(hello.pid or 0, signal.SIGTERM)
        hello.join(10)

    if shutil.which("datasette") or _has_datasette():
        port = free_port()
        ds = subprocess.Popen([python, "-m", "datasette", "serve", str(db), "--host", "127.0.0.1", "--port", str(port),
                               "--setting", "max_returned_rows", "5000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(port, "/-/versions.json")
        print("\nDatasette on the same file, nothing writing")
        try:
            load("datasette", port, ["/driverlog/driver_ci_status.json?_size=max"], args.clients, args.seconds)
        finally:
            ds.terminate()
            ds.wait(10)
    else:
        print("datasette: not installed (pip install datasette) - no yardstick")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work)
    return 0


def _has_datasette() -> bool:
    try:
        import datasette  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
