"""Verify a large bundle file on several cores (`exchange audit verify --bundle`).

This process reads the header and the checkpoints and checks them, then cuts the entry records
into one range per worker, each starting at an entry whose index is a multiple of
`ranges.BLOCK`. Each range is checked in its own process (this one takes the first), as
`exchange.audit.ranges` says, and the ranges' subtrees are joined in order by the one
`LogVerifier`, which checks every signed root as it reaches it. Whenever anything fails or is
not as a node writes it (a line that fails a check, a line longer than a read, a root that does
not match, a file that is not a regular file or that changed meanwhile), this gives up and the
caller checks the whole file on one core, which names the first bad entry in the same words. So
the answer is always the one-core answer.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from exchange.audit.log import BundleCheck, LogReport, Opener
from exchange.audit.ranges import BLOCK, entry_index
from exchange.cli.lines import MAX_LINE, READ_SIZE
from exchange.cli.range_worker import Range, RangeResult, check_range, started
from exchange.errors import AuditTampered, InvalidInput

log = logging.getLogger("exchange.audit")

PARALLEL_FROM = 200_000  # entries: a smaller log is verified on one core before workers would start
PER_WORKER = 100_000  # entries per worker at least
MAX_WORKERS = 8
HEAD_LINES = 4096  # header and checkpoint lines fed at a time
_ENTRY = b'{"type":"entry"'
_END = b'{"type":"end"'

Progressed = Callable[[int], None]


def default_workers() -> int:
    """Processes to verify with: the cores this process may run on, at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


@contextmanager
def checkpoint_opener(threads: int) -> Iterator[Opener]:
    """How checkpoint notes are opened: on `threads` threads (Ed25519 releases the GIL), or in
    turn with one, where a pool would only add its cost."""
    if threads <= 1:
        yield map
        return
    with ThreadPoolExecutor(threads) as pool:
        yield pool.map


def _line(fh: BinaryIO) -> bytes | None:
    """The next whole line, None at the end or past MAX_LINE."""
    line = fh.readline(MAX_LINE)
    return line if line.endswith(b"\n") else None


def _split_at(fh: BinaryIO, offset: int, stop: int) -> tuple[int, int] | None:
    """The first entry record at or after byte `offset` whose index is a multiple of BLOCK: its
    offset and index (None if the lines there are not entry records, or none is before `stop`)."""
    fh.seek(offset - 1)
    if _line(fh) is None:  # the rest of the line `offset` falls in (from the byte before it: a line may start there)
        return None
    for _ in range(2 * BLOCK):
        at = fh.tell()
        line = _line(fh) if at < stop else None
        index = entry_index(line) if line is not None else None
        if index is None:
            return None
        if index % BLOCK == 0:
            return at, index
    return None


def plan(fh: BinaryIO, check: BundleCheck, workers: int) -> tuple[list[Range], bytes] | None:
    """Feed the header and the checkpoints to `check`, then cut the entries into ranges: the
    ranges and the end record's line, or None if the file is not one to verify in ranges."""
    head: list[bytes] = []  # fed a few thousand at a time, so that checkpoints are opened together
    while True:
        at = fh.tell()
        line = _line(fh)
        if line is None:
            return None
        if line.startswith(_ENTRY) or len(head) == HEAD_LINES:
            check.feed_lines(head)
            head = []
        if line.startswith(_ENTRY):
            break
        if len(line) > MAX_LINE - READ_SIZE:  # whether one core takes it depends on where its reads end
            return None
        head.append(line[:-1])  # as read_lines gives it
    if check.header is None or check.header["complete"] is not True or (check.size or 0) < PARALLEL_FROM:
        return None
    end = fh.seek(0, os.SEEK_END)
    tail_at = fh.seek(max(at, end - 4096))
    tail = fh.read(end - tail_at)
    last = tail[:-1].rpartition(b"\n")[2] + b"\n"
    stop = end - len(last)
    count = min(workers, (check.size or 0) // PER_WORKER)
    if not tail.endswith(b"\n") or not last.startswith(_END) or stop <= at or count < 2:
        return None
    bounds = [(at, 0)]
    for k in range(1, count):
        found = _split_at(fh, at + (stop - at) * k // count, stop)
        if found is None or found[0] <= bounds[-1][0]:
            return None
        bounds.append(found)
    stops = [b[0] for b in bounds[1:]] + [stop]
    return [Range(start, end_at, first) for (start, first), end_at in zip(bounds, stops, strict=True)], last


def verify_in_ranges(
    path: Path,
    check: BundleCheck,
    finish: Callable[[BundleCheck], LogReport],
    *,
    workers: int,
    progress: Progressed | None = None,
    on_header: Callable[[int], None] | None = None,
) -> LogReport | None:
    """Verify the bundle file in ranges with `workers` processes; None if it is not one to verify
    so or anything in it is not as a node writes it (the caller then checks it line by line)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe is read once, from its start: one core
            return None
        with path.open("rb") as fh:
            before = os.fstat(fh.fileno())
            planned = plan(fh, check, workers)
    except (AuditTampered, InvalidInput, OSError):
        return None
    if planned is None:
        return None
    spans, end_line = planned
    if on_header is not None:
        on_header(check.size or 0)
    cuts = [cp.size for cp in check.verifier.checkpoints]
    context = multiprocessing.get_context("spawn")
    futures: list[Future[RangeResult]] = []
    pool: ProcessPoolExecutor | None = None
    given_up: Any = None
    try:
        given_up = context.Event()
        pool = ProcessPoolExecutor(len(spans) - 1, mp_context=context, initializer=started, initargs=(given_up,))
        futures += [pool.submit(check_range, str(path), s, cuts) for s in spans[1:]]
        results = [check_range(str(path), spans[0], cuts, progress)]
        if results[0] is None:
            return None
        results += [f.result() for f in futures]
        verifier = check.verifier
        for span, result in zip(spans, results, strict=True):
            if result is None or span.first != verifier.size:
                return None
            verifier.take_subtrees(result[1])
            if progress is not None:
                progress(verifier.checked)
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
            return None  # the file changed while it was read: one core reads it again as it is now
        check.feed_line(end_line[:-1])
        return finish(check)
    except (AuditTampered, InvalidInput, ValueError, OSError, NotImplementedError, BrokenProcessPool):
        return None
    except Exception:  # anything else (a worker's bug, its memory): one core answers as ever
        log.debug("the ranges gave up on an unexpected error; checking on one core", exc_info=True)
        return None
    finally:
        if given_up is not None:
            given_up.set()  # ranges still running stop at their next read
        if pool is not None:
            # Waited for beside the caller's work: a worker still starting must find the pool (and
            # its event) alive, or it dies with a traceback on the user's terminal; it then stops
            # at its first read.
            threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}).start()
