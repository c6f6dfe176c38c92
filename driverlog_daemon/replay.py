"""Source: a recorded stream (file, ``.gz`` file or stdin) fed through the pipeline with source ``replay``."""

from __future__ import annotations

import gzip
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import BinaryIO, TextIO

from driverlog_daemon.pipeline import Pending, Pipeline

BLOCK_BYTES = 1 << 20
BATCH_ROWS = 2000


@dataclass(slots=True)
class ReplayReport:
    bytes_read: int
    seconds: float
    interrupted: bool


@contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as raw:
        magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        if path.endswith(".gz") or magic == b"\x1f\x8b":
            with gzip.open(raw, "rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield raw


def blocks(stream: BinaryIO, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Blocks of about ``block_bytes`` of complete lines (a block is extended to the end of its last line)."""
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            return
        if not chunk.endswith(b"\n"):
            chunk += stream.readline()
        yield chunk


class _Progress:
    def __init__(self, out: TextIO, total: int | None) -> None:
        self.out, self.total, self.last = out, total, 0.0

    def show(self, done: int, lines: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            self.out.write(f"\r[{bar:<30}] {frac:6.1%} {lines:,} lines")
        else:
            self.out.write(f"\r{done / 1e6:,.1f} MB, {lines:,} lines")
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def replay(pipeline: Pipeline, path: str, *, progress: TextIO | None = None,
           batch_rows: int = BATCH_ROWS) -> ReplayReport:
    """Feed ``path`` through ``pipeline``; commit every ``batch_rows`` results and at the end.

    SIGINT stops at the next block boundary after committing what was matched, so every batch committed
    stays and the report says how far it got.
    """
    stop = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    started = time.perf_counter()
    done = 0
    pending = Pending()
    total = None
    if progress is not None and path != "-" and not path.endswith(".gz"):
        total = Path(path).stat().st_size
    bar = _Progress(progress, total) if progress is not None else None
    try:
        with open_input(path) as stream:
            for block in blocks(stream):
                pipeline.process_block(block, pending)
                done += len(block)
                if len(pending.verifications) >= batch_rows:
                    pipeline.commit(pending, "replay")
                if bar:
                    bar.show(done, pipeline.stats.lines)
                if stop:
                    break
        pipeline.commit(pending, "replay")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if bar:
            bar.show(done, pipeline.stats.lines, force=True)
            bar.close()
    return ReplayReport(bytes_read=done, seconds=time.perf_counter() - started, interrupted=stop)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def format_report(pipeline: Pipeline, report: ReplayReport) -> str:
    s = pipeline.stats
    rate = s.lines / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"lines read:            {s.lines:,} ({report.bytes_read:,} bytes in {report.seconds:.2f} s, "
        f"{rate:,.0f} events/s)",
        "by event type:         " + (", ".join(f"{k} {v:,}" for k, v in s.by_type.most_common()) or "none"),
        f"CI comments:           {s.ci_comments:,} ({sum(s.unmatched_ci_comments.values()):,} matched no pattern)",
        f"verifications:         {s.recorded:,} recorded, {s.already_present:,} already present",
        "malformed lines:       " + (", ".join(f"{k} {v:,}" for k, v in sorted(s.malformed.items())) or "none"),
    ]
    if report.interrupted:
        lines.append(f"interrupted after {report.bytes_read:,} bytes ({s.lines:,} lines); everything before "
                     "that point is committed")
    return "\n".join(lines)
