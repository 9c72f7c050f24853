"""Decode many image files into one array, in parallel, with progress.

Decoding (JPEG/PNG decompression and resizing) is the bulk of prepare's time and is independent
per image, so it runs in a process pool (``data.workers``; PIL holds the GIL for most of it, so
threads would not scale). Files are read in the parent, which knows how (a folder or a zip
archive); the workers hash and decode them; every result is written into its own row of the
output array, so the output is byte-identical for any number of workers. At most a few chunks
per worker are in flight, so memory stays bounded whatever the number of images."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from siamese.data.images import ImageSpec, as_spec, decode_image
from siamese.data.store import create_images, keep_rows

log = logging.getLogger(__name__)

_CHUNK = 32  # images per task: large enough to amortise the IPC, small enough to balance
_IN_FLIGHT = 4  # tasks queued per worker
_LOG_EVERY_S = 10.0  # progress log interval when stderr is not a terminal


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Decoder:
    """How a dataset's images are decoded: ``workers`` processes (None: one per available
    core; 1: in this process) into an array in memory, or, with ``path``, into a new ``.npy``
    file mapped from disk (prepare: the output never has to fit in memory)."""

    workers: int | None = 1
    path: Path | None = None
    progress: bool = False  # a bar (terminal) or periodic log lines while decoding

    @property
    def processes(self) -> int:
        return self.workers if self.workers is not None else available_cores()

    def allocate(self, n: int, spec: ImageSpec | int) -> np.ndarray:
        shape = as_spec(spec).shape
        if self.path is None:
            return np.empty((n, *shape), np.uint8)
        return create_images(self.path, n, shape)

    def keep(self, images: np.ndarray, rows: list[int]) -> np.ndarray:
        """The final images: ``rows`` (in order) of the decoded ones."""
        return keep_rows(images, rows)


@dataclass
class Decoded:
    """The outcome of one file: its sha256 and, unless ``error``, its pixels in the output."""

    index: int
    digest: str | None
    error: Exception | None


def _decode_chunk(
    chunk: list[tuple[int, bytes | None, str]], spec: ImageSpec
) -> list[tuple[int, str | None, np.ndarray | None, Exception | None]]:
    out = []
    for i, data, name in chunk:
        digest = hashlib.sha256(data).hexdigest()
        try:
            out.append((i, digest, decode_image(data, spec, name=name), None))
        except Exception as err:  # reported in order by the parent, which decides skip/raise
            out.append((i, digest, None, err))
    return out


class _Progress:
    """A tqdm bar with rate and ETA on a terminal; otherwise a log line every few seconds."""

    def __init__(self, total: int, enabled: bool, what: str):
        self.total, self.what, self.done = total, what, 0
        self.enabled = enabled and total > 0
        tty = self.enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="img", desc=what, file=sys.stderr) if tty else None
        self.start = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last >= _LOG_EVERY_S or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            log.info(
                "%s: %d/%d images (%.0f%%), %.0f images/s, %s left",
                self.what,
                self.done,
                self.total,
                100.0 * self.done / self.total,
                rate,
                _duration(eta),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def decode_files(
    read: Callable[[int], bytes],
    names: list[str],
    spec: ImageSpec | int,
    out: np.ndarray,
    decoder: Decoder,
    read_errors: tuple[type[Exception], ...] = (OSError,),
) -> Iterator[Decoded]:
    """Decode file ``i`` (``read(i)`` gives its bytes, ``names[i]`` names it in errors) into
    ``out[i]``, yielding each outcome in index order. A read error (``read_errors``) or a decode
    error is yielded, not raised, so the caller applies its policy (skip or stop); closing the
    generator early stops the pool."""
    spec = as_spec(spec)
    progress = _Progress(len(names), decoder.progress, "decoding")
    try:
        if decoder.processes <= 1 or len(names) <= _CHUNK:
            for i, name in enumerate(names):
                try:
                    data = read(i)
                except read_errors as err:
                    yield Decoded(i, None, err)
                else:
                    [(_, digest, arr, err)] = _decode_chunk([(i, data, name)], spec)
                    if arr is not None:
                        out[i] = arr
                    yield Decoded(i, digest, err)
                progress.update(1)
            return
        yield from _decode_parallel(
            read, names, spec, out, decoder.processes, read_errors, progress
        )
    finally:
        progress.close()


def _decode_parallel(read, names, spec, out, workers, read_errors, progress) -> Iterator[Decoded]:
    # forkserver: a clean child process, safe even when the parent runs threads (torch, MLflow)
    ctx = multiprocessing.get_context("forkserver")
    pending: deque[tuple[Future | None, list[Decoded]]] = deque()
    starts = iter(range(0, len(names), _CHUNK))
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        try:

            def submit() -> bool:
                start = next(starts, None)
                if start is None:
                    return False
                chunk, failed = [], []
                for i in range(start, min(start + _CHUNK, len(names))):
                    try:
                        chunk.append((i, read(i), names[i]))
                    except read_errors as err:
                        failed.append(Decoded(i, None, err))
                future = pool.submit(_decode_chunk, chunk, spec) if chunk else None
                pending.append((future, failed))
                return True

            while len(pending) < workers * _IN_FLIGHT and submit():
                pass
            while pending:
                future, failed = pending.popleft()
                results = list(failed)  # files that could not be read
                for i, digest, arr, err in future.result() if future is not None else []:
                    if arr is not None:
                        out[i] = arr
                    results.append(Decoded(i, digest, err))
                submit()
                results.sort(key=lambda d: d.index)
                progress.update(len(results))
                yield from results
        finally:
            for future, _ in pending:
                if future is not None:
                    future.cancel()
