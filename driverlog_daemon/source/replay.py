"""Source: a recorded stream (file, ``.gz`` file or stdin) fed through the pipeline with source ``replay``."""

from __future__ import annotations

import gzip
import itertools
import mmap
import os
import signal
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import BinaryIO, NamedTuple, NoReturn, TextIO, cast

from driverlog_daemon.match.rules import examine
from driverlog_daemon.model import InputError
from driverlog_daemon.parse.changes import ChangeRows
from driverlog_daemon.parse.scanner import Findings, Scanner
from driverlog_daemon.registry.load import Registry
from driverlog_daemon.store.pipeline import Pending, Pipeline
from driverlog_daemon.store.retry import DEFAULT_RETRY, retrying

BLOCK_BYTES = 1 << 20
BATCH_ROWS = 2000
MAX_CHANGE_ROWS = 20_000  # changes whose facts replay merges before writing them (bounds the memory)
PARALLEL_SPAN_BYTES = 4 << 20
PARALLEL_MIN_BYTES = 16 << 20  # below this, starting workers costs more than it saves
# The commit thread (SQLite) is replay's critical path once the database is large: the workers scan at a lower
# priority so that it gets a core whenever it can run.
WORKER_NICE = 10
CHECKPOINT_PAGES = 10_000  # WAL pages between checkpoints during a replay (Store.checkpoints_every)


class ReplayReport(NamedTuple):
    bytes_read: int
    seconds: float
    interrupted: bool


def _input_problem(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "truncated: the compressed data ends before its end marker"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return f"not a valid gzip file ({exc})"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a recording"
    if isinstance(exc, OSError):
        return f"cannot be read: {exc.strerror or exc}"
    return str(exc)


@contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    if _is_gzip(path):
        with gzip.open(path, "rb") as unzipped:
            yield unzipped  # type: ignore[misc]
    else:
        with open(path, "rb") as raw:
            yield raw


Span = tuple[bytes, int, int]  # (buffer, start, end): complete lines, without copying the buffer


def blocks(stream: BinaryIO, block_bytes: int = BLOCK_BYTES) -> Iterator[Span]:
    """Spans of complete lines, about ``block_bytes`` at a time.

    A line cut by the block boundary is joined with the rest of it from the next read (a small copy);
    the bulk of each read is handed over in place.
    """
    rest = b""
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            break
        first = chunk.find(b"\n")
        if first < 0:
            rest += chunk
            continue
        if rest:
            yield rest + chunk[:first + 1], 0, len(rest) + first + 1
            start = first + 1
        else:
            start = 0
        last = chunk.rfind(b"\n") + 1
        if last > start:
            yield chunk, start, last
        rest = chunk[last:]
    if rest:
        yield rest, 0, len(rest)


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


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _findings(pipeline: Pipeline, path: str, stream: BinaryIO, jobs: int) -> Iterator[tuple[Findings, int]]:
    """(what each block held, its size), in file order; with ``jobs`` > 1, examined by worker processes."""
    if jobs > 1 and path not in ("-", "") and not _is_gzip(path) and os.path.getsize(path) > PARALLEL_MIN_BYTES:
        yield from _parallel_findings(pipeline, path, jobs)
        return
    for block, start, end in blocks(stream):
        yield examine(pipeline.scanner, pipeline.registry, block, start, end), end - start


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return path.endswith(".gz") or f.read(2) == b"\x1f\x8b"


def _spans(path: str, span_bytes: int) -> list[tuple[str, int, int]]:
    """Byte ranges of ``path`` of about ``span_bytes``, each ending at a line end."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] < size:
            f.seek(min(bounds[-1] + span_bytes, size))
            f.readline()
            bounds.append(min(f.tell(), size))
    return [(path, a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _examine_span(scanner: Scanner, registry: Registry, span: tuple[str, int, int]) -> Findings:
    """Scan a span of the file where it lies, mapped (no copy, no fresh pages to fault in); read when the file
    cannot be mapped."""
    path, start, end = span
    with open(path, "rb") as f:
        offset = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(f.fileno(), end - offset, access=mmap.ACCESS_READ, offset=offset)
        except (OSError, ValueError):
            f.seek(start)
            return examine(scanner, registry, f.read(end - start))
        with mapped:  # the scanner uses only what bytes and mmap both offer: find, rfind, slices, re
            return examine(scanner, registry, cast(bytes, mapped), start - offset, end - offset)


class _WorkerFailed:
    """What a worker sends instead of its findings when it fails: the traceback, raised again in the parent."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _worker(scanner: Scanner, registry: Registry, spans: list[tuple[str, int, int]], out_fd: int) -> NoReturn:
    """A forked worker: the findings of each of its spans, pickled into its pipe, in order. Never returns."""
    import pickle
    import traceback

    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.nice(WORKER_NICE)
        with open(out_fd, "wb") as out:
            try:
                for span in spans:
                    pickle.dump(_examine_span(scanner, registry, span), out, pickle.HIGHEST_PROTOCOL)
                    out.flush()
            except BrokenPipeError:  # the parent stopped reading (interrupted): nothing more is wanted
                pass
            except BaseException:
                code = 1
                pickle.dump(_WorkerFailed(traceback.format_exc()), out, pickle.HIGHEST_PROTOCOL)
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # never back into the parent's code (its finally blocks, its database connection)


def _parallel_findings(pipeline: Pipeline, path: str, jobs: int) -> Iterator[tuple[Findings, int]]:
    """The findings of the file's spans in file order, from ``jobs`` forked workers taking every ``jobs``-th span.

    Each worker writes its findings into its own pipe (widened to 1 MiB: ~8 spans ahead, so that the workers scan
    on while this process waits for a commit, and a full pipe holds a worker back: memory stays bounded). Plain
    fork and pipes rather than a multiprocessing pool, whose helper threads would take CPU from the parent's
    commit thread, the critical path.
    """
    import pickle

    spans = _spans(path, PARALLEL_SPAN_BYTES)
    workers: list[tuple[int, BinaryIO]] = []
    try:
        for i in range(jobs):
            read_fd, write_fd = os.pipe()
            _widen(write_fd)
            pid = os.fork()  # before the first commit: no other thread of this process is running yet
            if pid == 0:
                os.close(read_fd)
                _worker(pipeline.scanner, pipeline.registry, spans[i::jobs], write_fd)
            os.close(write_fd)
            workers.append((pid, open(read_fd, "rb")))  # noqa: SIM115 (closed below, in finally)
        for k, (_, start, end) in enumerate(spans):
            pid, results = workers[k % jobs]
            try:
                findings = pickle.load(results)
            except EOFError:
                raise RuntimeError(f"replay worker {pid} ended before its work was done") from None
            if isinstance(findings, _WorkerFailed):
                raise RuntimeError(f"replay worker {pid} failed:\n{findings.text}")
            yield findings, end - start
    finally:
        for pid, results in workers:
            results.close()
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # one still scanning (interrupted, failed) stops now
            os.waitpid(pid, 0)


def _widen(pipe_fd: int) -> None:
    with suppress(OSError, AttributeError):
        import fcntl

        fcntl.fcntl(pipe_fd, fcntl.F_SETPIPE_SZ, 1 << 20)


def replay(pipeline: Pipeline, path: str, *, progress: TextIO | None = None,
           batch_rows: int = BATCH_ROWS, jobs: int = 1) -> ReplayReport:
    """Feed ``path`` through ``pipeline``; commit every ``batch_rows`` results and at the end.

    With ``jobs`` > 1 (and a plain file) worker processes scan and match blocks while this process commits,
    in file order. SIGINT stops at the next block after committing what was matched, so every batch
    committed stays and the report says how far it got.
    """
    stop = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    total = None if path == "-" or path.endswith(".gz") else Path(path).stat().st_size
    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    started = time.perf_counter()
    done = 0
    bar = _Progress(progress, total) if progress is not None else None
    committer = _Committer(pipeline)
    batches = _Batches(pipeline, committer, batch_rows, total)
    try:
        with pipeline.store.checkpoints_every(CHECKPOINT_PAGES):
            broken: BaseException | None = None
            try:
                try:
                    with open_input(path) as stream:
                        for findings, size in _findings(pipeline, path, stream, jobs):
                            done += size
                            batches.add(findings, done)
                            if bar:
                                bar.show(done, pipeline.stats.lines)
                            if stop:
                                break
                except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:  # the input, not the database
                    broken = exc
                batches.close()  # what was read before a broken end is recorded all the same
                if broken is not None:
                    read = pipeline.stats.lines
                    raise InputError(f"{path}: {_input_problem(broken)}" + (
                        f"; the {read:,} lines before it were read and their results recorded" if read else "")
                    ) from None
            finally:
                committer.close()  # before the checkpoint setting goes back: the connection is the committer's
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if bar:
            bar.show(done, pipeline.stats.lines, force=True)
            bar.close()
    return ReplayReport(bytes_read=done, seconds=time.perf_counter() - started, interrupted=stop)


class _Batches:
    """What replay commits, and when: a batch every ``batch_rows`` results.

    Change facts keep merging across batches until MAX_CHANGE_ROWS changes (a change's many events become one
    upsert; order-independent, so the marks end the same). The rows still carried at the end would be written
    after the last block, on one core; so near the end of a file of known size they go out early, with the results
    so far, while the rest is still being scanned: when an eighth of the file is left, then a sixteenth, a
    thirty-second, …
    """

    def __init__(self, pipeline: Pipeline, committer: _Committer, batch_rows: int, total: int | None) -> None:
        self.pipeline, self.committer, self.batch_rows, self.total = pipeline, committer, batch_rows, total
        self.pending = Pending()
        self.flush_at = None if total is None else total - total // 8  # bytes read

    def add(self, findings: Findings, done: int) -> None:
        """Take a block's findings; ``done``: the bytes read so far, that block included."""
        self.pipeline.absorb(findings, self.pending)
        near_end = self.flush_at is not None and done >= self.flush_at
        if len(self.pending.verifications) < self.batch_rows and not near_end:
            return
        carried = ChangeRows()
        if near_end:
            left = (self.total or 0) - done
            self.flush_at = done + left // 2 if left > PARALLEL_SPAN_BYTES else None
        elif len(self.pending.changes) < MAX_CHANGE_ROWS:
            carried, self.pending.changes = self.pending.changes, carried
        self.committer.submit(self.pending)
        self.pending = Pending(changes=carried)

    def close(self) -> None:
        """Commit what is left."""
        self.committer.submit(self.pending)


class _Committer:
    """Commits batches on a second thread, one at a time, while the next block is scanned.

    SQLite releases the GIL while it works, so the database's share of the time overlaps the scanning.
    A failure in the thread is raised again in the caller at the next submit or at close.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, pending: Pending) -> None:
        self._wait()
        self._thread = threading.Thread(target=self._commit, args=(pending,), name="driverlog-replay-commit")
        self._thread.start()

    def _commit(self, pending: Pending) -> None:
        try:  # a moment's lock by another process is waited out; a lasting failure ends the replay
            retrying(lambda: self.pipeline.commit(pending, "replay"), DEFAULT_RETRY,
                     give_up_after=len(DEFAULT_RETRY.quiet))
        except BaseException as exc:  # raised again in the caller
            self._error = exc

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        self._wait()


def _main_thread() -> bool:
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
