"""Hostile-client benchmark: normal requests to the web tier beside slow clients and slow exports.

    python bench/hostile.py [--verifications N] [--slow 200] [--exports 130] [--seconds 10]

Builds (fixed seed, as ``bench/web.py`` does) a database with N verifications (default 200,000), serves it with
``driverlog-daemon serve`` and the shipped ``[http]`` settings, then measures 8 keep-alive clients asking for
``/``, a driver page and ``/api/1.0/drivers`` in turn: first alone, then beside ``--slow`` connections that
trickle their request headers a byte every half second and ``--exports`` connections that each ask for the
verifications CSV and read it at 16 KB/s. Prints p50/p99/max per route and phase, the answers that were not 200,
what the exports got (200 or 503), and the largest WAL seen. Figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from web import SHIPPED, UPSTREAM, build, serve_ours, wait_http  # noqa: E402

from driverlog_daemon.registry.load import load_registry  # noqa: E402
from driverlog_daemon.testing.net import free_port  # noqa: E402


def normal(port: int, paths: list[str], seconds: float, times: dict[str, list[float]], bad: list[str]) -> None:
    phase_start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        path = paths[i % len(paths)]
        i += 1
        started = time.perf_counter()
        try:
            conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                bad.append(f"{path}: {r.status}")
        except OSError as exc:
            bad.append(f"{path}: {exc!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        took = time.perf_counter() - started
        times[path].append(took)
        if took > 1.0:
            bad.append(f"{path}: {took:.1f} s, asked {started - phase_start:.1f} s into the phase")
    conn.close()


def measure(port: int, paths: list[str], seconds: float, label: str) -> None:
    times: dict[str, list[float]] = {p: [] for p in paths}
    bad: list[str] = []
    clients = [threading.Thread(target=normal, args=(port, paths[i:] + paths[:i], seconds, times, bad))
               for i in range(8)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    for path, ts in times.items():
        ts.sort()
        print(f"  {label:<9} {path:<22} {len(ts):>6} answers  p50 {statistics.median(ts) * 1000:7.1f} ms  "
              f"p99 {ts[max(0, int(len(ts) * 0.99) - 1)] * 1000:7.1f} ms  max {ts[-1] * 1000:7.1f} ms")
    print(f"  {label:<9} not 200 or over 1 s: {len(bad)}{' e.g. ' + '; '.join(bad[:3]) if bad else ''}")


def trickler(port: int, n: int, stop: threading.Event) -> None:
    sockets = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"G")
            sockets.append(s)
        except OSError:
            pass
    while not stop.wait(0.5):
        for s in sockets:
            try:
                s.sendall(b"E")
            except OSError:
                pass
    for s in sockets:
        s.close()


def slow_export(port: int, stop: threading.Event, outcome: list[str]) -> None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(b"GET /export/verifications.csv HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(16384)
        outcome.append(first.split(b" ", 2)[1].decode() if first.startswith(b"HTTP/") else "none")
        while not stop.is_set() and s.recv(16384):
            time.sleep(1.0)  # 16 KB/s
        s.close()
    except OSError as exc:
        outcome.append(type(exc).__name__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifications", type=int, default=200_000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--exports", type=int, default=130)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    registry_path = UPSTREAM if UPSTREAM.exists() else SHIPPED
    registry = load_registry(registry_path)
    work = Path(tempfile.mkdtemp(prefix="driverlog-hostile-"))
    db = work / "driverlog.sqlite"
    build(db, registry, args.verifications)
    port = free_port()
    server = serve_ours(work, db, registry_path, port)
    try:
        wait_http(port, "/healthz")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/api/1.0/drivers")
        driver = next(d["id"] for d in json.loads(conn.getresponse().read())["drivers"] if d.get("ci"))
        conn.close()
        paths = ["/", f"/drivers/{driver}", "/api/1.0/drivers"]
        for p in paths:  # warm
            wait_http(port, p)
        print(f"{args.verifications:,} verifications; the shipped [http] settings; 8 normal clients, "
              f"{args.seconds:g} s a phase")
        measure(port, paths, args.seconds, "alone")
        stop = threading.Event()
        outcome: list[str] = []
        hostile = [threading.Thread(target=trickler, args=(port, args.slow, stop), daemon=True)]
        hostile += [threading.Thread(target=slow_export, args=(port, stop, outcome), daemon=True)
                    for _ in range(args.exports)]
        for h in hostile:
            h.start()
        wal = db.with_name(db.name + "-wal")
        peak = [0]

        def watch_wal() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], wal.stat().st_size if wal.exists() else 0)

        threading.Thread(target=watch_wal, daemon=True).start()
        time.sleep(2.0)  # let them take their threads
        measure(port, paths, args.seconds, "hostile")
        stop.set()
        counts = {k: outcome.count(k) for k in sorted(set(outcome))}
        print(f"  {args.slow} trickling clients; {args.exports} slow exports answered {counts}; "
              f"largest WAL {peak[0] / 1e6:.1f} MB")
    finally:
        server.terminate()
        server.wait(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
