"""Export benchmark: ``/export/verifications.csv`` of N verifications from the web tier, and its memory.

    python bench/export.py [--verifications N] [--keep]

Builds (as bench/web.py, fixed seed) a database with N verifications (default 1,000,000) for the upstream
registry's drivers, serves it with ``driverlog-daemon serve``, downloads the whole export while sampling every web
worker's resident memory (VmRSS) five times a second, and prints rows, bytes, time and the workers' memory before,
at its highest during, and after — three times in a row; then the same export from the CLI
(``driverlog-daemon export``) with its peak RSS. Constant memory means the peak stays near the start whatever N is,
and does not climb from one export to the next.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from web import SHIPPED, UPSTREAM, build, free_port, serve_ours, wait_http, workers_memory  # noqa: E402

from driverlog_daemon.registry.load import load_registry  # noqa: E402


def workers_rss(parent: int) -> dict[int, float]:
    """Current RSS (VmRSS) in MB of each web worker of the arbiter ``parent``."""
    return workers_memory(parent, "VmRSS")


def export_once(port: int, arbiter: int, round_: int) -> None:
    before = workers_rss(arbiter)
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            for pid, mb in workers_rss(arbiter).items():
                peak[pid] = max(peak.get(pid, 0.0), mb)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    conn.request("GET", "/export/verifications.csv")
    answer = conn.getresponse()
    size = lines = 0
    while chunk := answer.read(1 << 16):
        size += len(chunk)
        lines += chunk.count(b"\n")  # (a CRLF may straddle two reads)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = workers_rss(arbiter)
    print(f"web tier, export {round_}: HTTP {answer.status}, {lines - 1:,} rows, {size / 1e6:,.0f} MB in "
          f"{seconds:.1f} s ({(lines - 1) / seconds:,.0f} rows/s)")
    for pid in sorted(before):
        print(f"  worker {pid}: RSS {before[pid]:.0f} MB before, {peak.get(pid, 0):.0f} MB at most during, "
              f"{after.get(pid, 0):.0f} MB after")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifications", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    registry_path = UPSTREAM if UPSTREAM.exists() else SHIPPED
    registry = load_registry(registry_path)
    work = Path(tempfile.mkdtemp(prefix="driverlog-exportbench-"))
    db = work / "driverlog.sqlite"
    started = time.perf_counter()
    build(db, registry, args.verifications)
    print(f"database: {args.verifications:,} verifications, {db.stat().st_size / 1e6:,.0f} MB, built in "
          f"{time.perf_counter() - started:.0f} s ({registry.summary()})")
    port = free_port()
    ours = serve_ours(work, db, registry_path, port)
    try:
        wait_http(port, "/")
        for _ in range(8):  # every worker warm: it has answered a page
            wait_http(port, "/api/1.0/drivers")
        for round_ in (1, 2, 3):  # memory that grew with the rows would grow again each round
            export_once(port, ours.pid, round_)
    finally:
        ours.terminate()
        ours.wait(10)
    started = time.perf_counter()
    cli = subprocess.run([sys.executable, "-c",
                          "import resource, sys; from driverlog_daemon.cli import main; "
                          "code = main(['export', 'verifications', '--database', sys.argv[1]]); "
                          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
                          "sys.exit(code)", str(db)],
                         capture_output=True, check=True)
    seconds = time.perf_counter() - started
    rows = cli.stdout.count(b"\r\n") - 1
    print(f"CLI: {rows:,} rows, {len(cli.stdout) / 1e6:,.0f} MB in {seconds:.1f} s, "
          f"peak RSS {int(cli.stderr.split()[-1]) / 1024:.0f} MB")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
