"""Reading many files in order, fast: the one rule for when to use threads (InOrderMapper), and the
content digest of a file. Used by scan (headers, duplicates), the pixel cache (key, decoding) and
predict (decoding), so none of them imports another for it.
"""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


#: Mean decoding time per image from which images are decoded by several threads (training's decode and
#: `imgclf predict`). Pillow lets go of the GIL while it decodes and resizes, but opening a file and
#: setting up the decoder is Python: with small images (a 28x28 PNG: ~0.1 ms, nearly all Python) two
#: decoding threads only fight over the GIL (on 2 cores 1.7x the time and twice the CPU of one); with
#: photos (1600x1200 JPEGs to 224x224: ~14 ms, mostly in C) two threads take 0.65x the time of one.
PARALLEL_DECODE_MIN_S = 0.001
#: items per task when cheap, and how many are timed first
DECODE_STEP = 32
#: longest time spent timing the first items; the work per task when items are slow
PROBE_S = 0.05
TASK_S = 0.02


class InOrderMapper:
    """Calls fn over items, in order, in the calling thread while each call is cheap, in threads once a
    call is slow: the first calls are timed (up to DECODE_STEP items or PROBE_S seconds) and, when one
    takes PARALLEL_DECODE_MIN_S or more (photos, big files, a slow or network disk), the rest goes to
    `workers` threads in tasks of about TASK_S seconds, and so does every later call on this mapper.
    Use it as a context manager, or close() it."""

    def __init__(self, workers: Optional[int] = None):
        self.workers = workers or default_workers()
        self.pool: Optional[ThreadPoolExecutor] = None
        self.step = DECODE_STEP

    def __call__(self, fn: Callable, items: Sequence, progress: Optional[Callable[[int], None]] = None) -> list:
        n = len(items)
        out: list = []
        if self.pool is None:
            t0 = time.perf_counter()
            while len(out) < min(n, DECODE_STEP) and (not out or time.perf_counter() - t0 < PROBE_S):
                out.append(fn(items[len(out)]))
            per_item = (time.perf_counter() - t0) / max(1, len(out))
            if progress and out:
                progress(len(out))
            if self.workers > 1 and len(out) < n and per_item >= PARALLEL_DECODE_MIN_S:
                self.step = max(1, min(DECODE_STEP, int(TASK_S / per_item)))
                self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imgclf-decode")

        def task(run):
            return [fn(x) for x in run]

        runs = [items[i:i + self.step] for i in range(len(out), n, self.step)]
        for run in (self.pool.map(task, runs) if self.pool else map(task, runs)):
            out.extend(run)
            if progress:
                progress(len(out))
        return out

    def close(self, wait: bool = True) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> "InOrderMapper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def map_in_order(fn: Callable, items: Sequence, workers: Optional[int] = None,
                 progress: Optional[Callable[[int], None]] = None) -> list:
    """[fn(x) for x in items], in order: in this thread while each call is cheap, in `workers` threads
    when calls are slow (InOrderMapper). `progress(done)` is called as items are done."""
    with InOrderMapper(workers) as mapper:
        return mapper(fn, items, progress)


def file_digest(path: str) -> str:
    """blake2b of the file's bytes. Unbuffered, in one read for ordinary image sizes (~15% faster than
    1 MiB chunks on 15,000 small PNGs), in 8 MiB chunks beyond that."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(8 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def fingerprint(paths: Sequence[str]) -> str:
    """Names and sizes of the files, order-free: a cheap "is this the same data?" check (recorded in
    metadata.json as dataset.fingerprint; training, resume, quantize and evaluate compare it)."""
    h = hashlib.blake2b(digest_size=12)
    for p in sorted(paths):
        try:
            h.update(f"{os.path.basename(p)}\0{os.stat(p).st_size}\n".encode())
        except OSError:
            pass
    return h.hexdigest()
