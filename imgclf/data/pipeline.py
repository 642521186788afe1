"""Pixels for training and evaluation: decode each image once, cache it, feed tf.data.

decode (parallel threads, via preprocessing.load_image) -> uint8 array (in memory, or a memory-mapped
file in a cache folder keyed by the files' content and the preprocessing spec) -> tf.data:
shuffled indices -> gather a batch from the array where it lies -> float32 -> (train only)
augmentation -> prefetch.
TensorFlow is imported inside the functions that need it.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from imgclf.data.files import default_workers, file_digest, map_in_order
from imgclf.errors import ImageError
from imgclf.preprocessing import PreprocessingSpec, load_image

#: decoded datasets up to this size are held in RAM; larger ones stream from the memory-mapped cache
DEFAULT_MEMORY_BUDGET = int(os.environ.get("IMGCLF_CACHE_MEMORY", 4 * 1024 ** 3))


@dataclass
class Decoded:
    pixels: np.ndarray          # (n, h, w, c) uint8, in memory or a np.memmap
    labels: np.ndarray          # (n,) int32
    paths: List[str]            # the n usable paths, in order
    problems: List[ImageError]  # images that could not be decoded (skipped)
    from_cache: bool = False


def cache_key(paths: Sequence[str], spec: PreprocessingSpec, workers: Optional[int] = None) -> str:
    """The pixel cache's key: the preprocessing spec and the CONTENT of every file, in order.

    Editing, replacing or re-exporting an image changes the key even when its size and mtime do not; a
    `touch`, a copy or a moved data folder does not. Hashing reads each file once (blake2b; in threads
    when the files are big): for small images a fraction of decoding them (bench/train_pipeline.py, warm cache)."""
    def digest(p):
        try:
            return file_digest(p)
        except OSError as e:
            return f"unreadable:{e.errno}"

    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for d in map_in_order(digest, list(paths), workers):
        h.update(d.encode() + b"\n")
    return h.hexdigest()


def _decode_into(out: np.ndarray, paths: Sequence[str], spec: PreprocessingSpec, workers: int,
                 progress: Optional[Callable[[int], None]], done_before: int = 0) -> List[Optional[ImageError]]:
    """Decode `paths` into the rows of `out`; returns one ImageError or None per path. Small images are
    decoded in this thread (mostly Python: threads would only fight over the GIL; 10,000 28x28 PNGs
    took 2.0-2.6 CPU-s in 2 threads, ~1 s in one), slow ones in threads (`map_in_order`)."""
    def work(i):
        try:
            out[i] = load_image(paths[i], spec)
            return None
        except ImageError as e:
            return e

    return map_in_order(work, range(len(paths)), workers,
                        (lambda done: progress(done_before + done)) if progress else None)


#: rows decoded per chunk when the pixels stream to the cache file (the chunk is the only copy in RAM)
STREAM_CHUNK_BYTES = 32 * 1024 ** 2


def _new_npy(path: Path, shape) -> int:
    """Create `path` as a .npy file of uint8 `shape` (contents unset); return the data's byte offset."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=tuple(shape))
    offset = mm.offset
    del mm
    return offset


def _decode_to_file(tmp: Path, paths: Sequence[str], spec: PreprocessingSpec, workers: int,
                    progress: Optional[Callable[[int], None]]) -> List[Optional[ImageError]]:
    """Decode chunk by chunk and write each chunk with plain file writes: RAM holds one chunk, never the
    whole data set (pages written through a memory map would stay resident in this process)."""
    row = int(np.prod(spec.shape))
    offset = _new_npy(tmp, (len(paths),) + spec.shape)
    per_chunk = max(1, STREAM_CHUNK_BYTES // row)
    buf = np.empty((min(per_chunk, len(paths)),) + spec.shape, dtype=np.uint8)
    errors: List[Optional[ImageError]] = []
    with open(tmp, "r+b") as f:
        for start in range(0, len(paths), per_chunk):
            chunk = paths[start:start + per_chunk]
            errs = _decode_into(buf, chunk, spec, workers, progress, done_before=start)
            f.seek(offset + start * row)
            f.write(memoryview(buf[:len(chunk)]).cast("B"))
            errors += errs
    return errors


def _compact_file(src: Path, dest: Path, keep: np.ndarray, shape) -> None:
    """Copy the kept rows of the .npy file `src` into a new .npy file `dest`, chunk by chunk."""
    row = int(np.prod(shape))
    src_mm = np.load(src, mmap_mode="r")
    src_offset = src_mm.offset
    del src_mm
    dest_offset = _new_npy(dest, (int(keep.sum()),) + tuple(shape))
    kept_rows = np.flatnonzero(keep)
    per_chunk = max(1, STREAM_CHUNK_BYTES // row)
    with open(src, "rb") as fin, open(dest, "r+b") as fout:
        fout.seek(dest_offset)
        for start in range(0, len(kept_rows), per_chunk):
            for i in kept_rows[start:start + per_chunk]:
                fin.seek(src_offset + int(i) * row)
                fout.write(fin.read(row))


def decode(paths: Sequence[str], labels: Sequence[int], spec: PreprocessingSpec,
           cache_dir: Optional[str] = None, workers: Optional[int] = None,
           memory_budget: int = DEFAULT_MEMORY_BUDGET,
           progress: Optional[Callable[[int], None]] = None) -> Decoded:
    """Decode every image once. Unusable images are dropped and returned in `problems`.

    With `cache_dir`, the pixels are kept in `<cache_dir>/<key>.npy` and reused by the next run with
    the same files and spec. A dataset that fits `memory_budget` is returned in RAM; a larger one is
    decoded to that file chunk by chunk and returned as a read-only np.memmap of it, so neither
    decoding nor training holds more than a chunk or a batch of it in this process's memory."""
    paths = list(paths)
    labels_arr = np.asarray(labels, dtype=np.int32)
    workers = workers or default_workers()
    nbytes = len(paths) * int(np.prod(spec.shape))
    fits = nbytes <= memory_budget

    def result(pixels, keep, problems, from_cache=False) -> Decoded:
        return Decoded(pixels, labels_arr[keep], [p for p, k in zip(paths, keep) if k], problems, from_cache)

    def decode_in_memory():
        full = np.empty((len(paths),) + spec.shape, dtype=np.uint8)
        errors = _decode_into(full, paths, spec, workers, progress)
        keep = np.array([e is None for e in errors], dtype=bool)
        return (full if keep.all() else full[keep]), errors, keep

    if not cache_dir:
        pixels, errors, keep = decode_in_memory()
        return result(pixels, keep, [e for e in errors if e is not None])

    cache = Path(cache_dir)
    key = cache_key(paths, spec, workers)
    data_file, index_file = cache / f"{key}.npy", cache / f"{key}.json"
    cached = _read_cache(data_file, index_file, paths, spec, fits)
    if cached is not None:
        return result(*cached, from_cache=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.{uuid.uuid4().hex[:8]}.tmp.npy"
    try:
        if fits:
            pixels, errors, keep = decode_in_memory()
            with open(tmp, "wb") as f:
                np.save(f, pixels)
        else:
            errors = _decode_to_file(tmp, paths, spec, workers, progress)
            keep = np.array([e is None for e in errors], dtype=bool)
            if not keep.all():
                compact = tmp.with_name(tmp.name.replace(".tmp.npy", ".kept.tmp.npy"))
                _compact_file(tmp, compact, keep, spec.shape)
                os.replace(compact, tmp)
            pixels = None
        os.replace(tmp, data_file)
    finally:
        if tmp.exists():
            tmp.unlink()
    tmp_index = index_file.with_name(f".{index_file.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp_index.write_text(json.dumps({"ok": keep.tolist(), "spec": spec.to_dict(),
                                     "problems": [[i, e.reason] for i, e in enumerate(errors) if e is not None]}))
    os.replace(tmp_index, index_file)
    return result(np.load(data_file, mmap_mode="r") if pixels is None else pixels, keep,
                  [e for e in errors if e is not None])


def _read_cache(data_file: Path, index_file: Path, paths: List[str], spec: PreprocessingSpec, fits: bool):
    """(pixels, keep mask, problems) from a cache entry that matches, else None (a damaged entry is
    rebuilt by the caller). Problems are stored by position: the same content may sit under other paths now."""
    if not (data_file.exists() and index_file.exists()):
        return None
    try:
        index = json.loads(index_file.read_text())
        keep = np.asarray(index["ok"], dtype=bool)
        mapped = np.load(data_file, mmap_mode="r")
        if len(keep) != len(paths) or mapped.shape != (int(keep.sum()),) + spec.shape:
            return None
        problems = [ImageError(paths[i], r) for i, r in index["problems"]]
        # in budget: one plain read into RAM (copying from the map would also leave its pages mapped)
        return (np.load(data_file) if fits else mapped), keep, problems
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError):  # EOFError: an empty .npy
        return None


def _row_reader(pixels: np.memmap):
    """fetch(indices) -> uint8 rows of a memory-mapped cache, read with plain file reads.

    Reading through the map would leave every touched page resident in this process: after one epoch
    the whole file would count as its memory. Plain reads go through the OS page cache instead, which
    the OS can drop. Falls back to the map for a view that is not a contiguous block of the file."""
    import mmap as mmap_module

    shape = pixels.shape[1:]
    row = int(np.prod(shape)) * pixels.itemsize
    base = getattr(pixels, "_mmap", None)
    path = getattr(pixels, "filename", None)
    if base is None or path is None or not pixels.flags.c_contiguous or pixels.dtype != np.uint8:
        def fetch_mapped(i):
            order = np.argsort(i)
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            return np.asarray(pixels[i[order]])[inverse]
        return fetch_mapped
    # where this array starts in the file: the map starts at offset rounded down to the granularity
    map_start = pixels.offset - pixels.offset % mmap_module.ALLOCATIONGRANULARITY
    start = map_start + (pixels.ctypes.data - np.frombuffer(base, dtype=np.uint8).ctypes.data)

    def fetch(i):
        i = np.asarray(i, dtype=np.int64)
        order = np.argsort(i, kind="stable")
        rows = i[order]
        out = np.empty((len(i),) + shape, dtype=np.uint8)
        flat = out.reshape(len(i), row)
        with open(path, "rb", buffering=0) as f:
            k = 0
            while k < len(rows):  # one read per run of consecutive rows (the whole batch when unshuffled)
                j = k + 1
                while j < len(rows) and rows[j] == rows[j - 1] + 1:
                    j += 1
                f.seek(start + int(rows[k]) * row)
                data = f.read((j - k) * row)
                flat[order[k:j]] = np.frombuffer(data, dtype=np.uint8).reshape(j - k, row)
                k = j
        return out

    return fetch


def make_dataset(pixels: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False,
                 seed: int = 0, augment=None, shard=None, repeat: bool = False):
    """A tf.data pipeline of (float32 NHWC raw pixels, int32 labels) batches.

    Shuffling works on indices, so every epoch draws a new order (never `shuffle().cache()`, which
    freezes epoch 1's order). Each batch is gathered from `pixels` where they are, in RAM or in the
    memory-mapped cache (read one batch at a time): the pixels are never copied into TensorFlow. A
    tf.constant of them held one extra copy for the whole run and a second one while it was made
    (bench/train_memory.py); gathering a batch in NumPy costs about as much as tf.gather did.

    `repeat`: the epochs follow one another in one endless dataset (each pass reshuffled), for model.fit
    with steps_per_epoch. Keras then keeps one iterator for the whole fit instead of making one every
    epoch: dropping an iterator that has just finished waits for its threads, in which nothing runs
    (2-9 s at each epoch's first step with tf.data's autotuner on; 2-5 s under a distribution strategy
    without it; bench/iterator_teardown.py, docs/benchmarks.md)."""
    from imgclf.tf_quiet import import_tensorflow

    tf = import_tensorflow()
    n = len(labels)
    shape = pixels.shape[1:]
    idx = tf.data.Dataset.range(n)
    if shuffle:
        idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    idx = idx.batch(batch_size)
    if shard is not None:  # distributed training: this worker's share of each batch (distribute.py)
        idx = shard(idx, n, batch_size)
    if repeat:
        idx = idx.repeat()
    y_all = tf.constant(labels, dtype=tf.int32)
    if isinstance(pixels, np.memmap):
        fetch = _row_reader(pixels)
    else:
        def fetch(i):
            return np.take(pixels, i, axis=0)
    pixel_dtype = tf.as_dtype(pixels.dtype)

    def gather(i):
        x = tf.numpy_function(fetch, [i], pixel_dtype, stateful=False)
        x.set_shape((None,) + shape)
        return tf.cast(x, tf.float32), tf.gather(y_all, i)

    ds = idx.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        # sequential on purpose: the random layers draw from one seeded generator, in batch order
        ds = ds.map(lambda x, y: (augment(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(tf))


def _options(tf):
    """tf.data's autotuning model off: with it, dropping an iterator (Keras makes a new one every epoch)
    waits for the autotuner's thread, 2-9 s at each epoch's first step on one core, in which nothing runs
    (bench/iterator_teardown.py). The map runs on as many threads as the process may use, the prefetch
    buffer still adapts."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options
