"""Live latency: a stream line read -> its verification committed, through the real daemon and a real SSH stream.

    python bench/latency.py [--events N] [--pace SECONDS] [--runs R] [--web-clients N]

Starts the Gerrit test server on 127.0.0.1 and `driverlog-daemon run` against it (the fault suite's set-up, with
no fault), pushes N sample events (15% CI comments) one every PACE seconds, waits until every result is in the
database, and reads the daemon's `driverlog_ingest_latency_seconds` histogram from /metrics: the mean and the
bucket bounds of p50 and p99. With ``--web-clients N``, ``wrk`` reads the API with N connections from the daemon's
own web tier meanwhile (each run is then done twice: quiet, then under that load). Run it with PYTHONPATH
pointing at another checkout to compare versions. Not a test.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT.parent / "shared" / "driverlog" / "default_data.json"


def histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets as (upper bound, count), sum, count) of a histogram in Prometheus' text format."""
    buckets = [(float("inf") if le == "+Inf" else float(le), float(v))
               for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)]
    total = float(re.search(rf"^{name}_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(rf"^{name}_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return buckets, total, count


def quantile_bound(buckets: list[tuple[float, float]], count: float, q: float) -> float:
    return next(le for le, n in buckets if n >= q * count)


def one_run(events: int, pace: float, seed: int, web_clients: int = 0) -> tuple[float, float, float, int]:
    from driverlog_daemon.testing.faults import FaultRun, Scenario, reference
    from driverlog_daemon.testing.samples import sample_events

    registry_path = UPSTREAM if UPSTREAM.exists() else ROOT / "data" / "default_data.json"
    with tempfile.TemporaryDirectory(prefix="driverlog-latency-") as tmp:
        run = FaultRun(Path(tmp), Scenario(seed=seed, events=events, pace=pace), registry_path, say=lambda _: None,
                       stall_timeout=30.0)
        try:
            now = int(time.time())
            sample = list(sample_events(run.registry, events, seed=seed, start=now - int(events * 1.6),
                                        ci_share=0.15))
            expected = sum(reference(sample, run.registry).values())
            run.start_daemon()
            readers = None
            if web_clients:  # the API read as hard as these connections can, for the whole run
                port = _port(run.log.read_text())
                seconds = int(events * pace) + 5
                readers = subprocess.Popen(["wrk", "-t", "2", "-c", str(web_clients), "-d", f"{seconds}s",
                                            "-H", "Accept-Encoding: gzip", f"http://127.0.0.1:{port}/api/1.0/drivers"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for event in sample:
                run.server.push_event(event)
                time.sleep(pace)
            run._wait(lambda: run._settled(expected), 60, "every result")
            if readers is not None:
                readers.terminate()
                readers.wait()
            port = _port(run.log.read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            buckets, total, count = histogram(text, "driverlog_ingest_latency_seconds")
            return total / count, quantile_bound(buckets, count, 0.5), quantile_bound(buckets, count, 0.99), int(count)
        finally:
            run.stop_daemon()
            run.close()


def _port(log: str) -> int:
    for line in log.splitlines():
        if "http_listening" in line:
            return int(re.search(r'"port": (\d+)', line).group(1))  # type: ignore[union-attr]
    raise SystemExit("the daemon did not say where it listens")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--pace", type=float, default=0.004)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--web-clients", type=int, default=0, help="wrk connections reading the API meanwhile")
    args = parser.parse_args()
    if args.web_clients and not shutil.which("wrk"):
        raise SystemExit("--web-clients needs wrk (Debian's package)")
    import driverlog_daemon

    print(f"driverlog_daemon from {Path(driverlog_daemon.__file__).parent}; {args.events} events, one every "
          f"{args.pace * 1000:g} ms")
    for seed in range(1, args.runs + 1):
        for clients in ((0, args.web_clients) if args.web_clients else (0,)):
            mean, p50, p99, count = one_run(args.events, args.pace, seed, clients)
            load = f", {clients} clients reading the API" if clients else (", quiet" if args.web_clients else "")
            print(f"run {seed}{load}: {count} verifications, line read -> committed: mean {mean * 1000:.1f} ms, "
                  f"p50 <= {p50 * 1000:g} ms, p99 <= {p99 * 1000:g} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
