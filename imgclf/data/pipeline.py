"""Pixels for training and evaluation: decode each image once, cache it, feed tf.data.

decode (parallel, via preprocessing.load_image) -> uint8 array (in memory, or a memory-mapped file in a
cache folder keyed by the files' path/size/mtime and the preprocessing spec) -> tf.data: shuffled
indices -> gather a batch -> float32 -> (train only) augmentation -> prefetch.
TensorFlow is imported inside the functions that need it.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

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


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def cache_key(paths: Sequence[str], spec: PreprocessingSpec) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def _decode_into(out: np.ndarray, paths: Sequence[str], spec: PreprocessingSpec, workers: int,
                 progress: Optional[Callable[[int], None]]) -> List[Optional[ImageError]]:
    def work(i):
        try:
            out[i] = load_image(paths[i], spec)
            return None
        except ImageError as e:
            return e

    errors: List[Optional[ImageError]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, err in enumerate(pool.map(work, range(len(paths)), chunksize=1)):
            errors.append(err)
            if progress and (i % 64 == 0 or i == len(paths) - 1):
                progress(i + 1)
    return errors


def decode(paths: Sequence[str], labels: Sequence[int], spec: PreprocessingSpec,
           cache_dir: Optional[str] = None, workers: Optional[int] = None,
           memory_budget: int = DEFAULT_MEMORY_BUDGET,
           progress: Optional[Callable[[int], None]] = None) -> Decoded:
    """Decode every image once. Unusable images are dropped and returned in `problems`.

    With `cache_dir`, the pixels are kept in `<cache_dir>/<key>.npy` and reused by the next run with
    the same files and spec; a dataset larger than `memory_budget` is streamed from that file."""
    paths = list(paths)
    labels_arr = np.asarray(labels, dtype=np.int32)
    workers = workers or default_workers()
    nbytes = len(paths) * int(np.prod(spec.shape))
    if cache_dir:
        cache = Path(cache_dir)
        key = cache_key(paths, spec)
        data_file, index_file = cache / f"{key}.npy", cache / f"{key}.json"
        if data_file.exists() and index_file.exists():
            try:
                index = json.loads(index_file.read_text())
                pixels = np.load(data_file, mmap_mode="r")
                keep = np.asarray(index["ok"], dtype=bool)
                if pixels.shape[0] == int(keep.sum()):
                    problems = [ImageError(p, r) for p, r in index["problems"]]
                    if nbytes <= memory_budget:
                        pixels = np.array(pixels)
                    return Decoded(pixels, labels_arr[keep], [p for p, k in zip(paths, keep) if k],
                                   problems, from_cache=True)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt below
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{key}.{uuid.uuid4().hex[:8]}.tmp.npy"
        full = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths),) + spec.shape)
        errors = _decode_into(full, paths, spec, workers, progress)
        keep = np.array([e is None for e in errors], dtype=bool)
        if keep.all():
            full.flush()
            del full
            os.replace(tmp, data_file)
        else:
            kept = np.lib.format.open_memmap(data_file.with_suffix(".tmp2.npy"), mode="w+", dtype=np.uint8,
                                             shape=(int(keep.sum()),) + spec.shape)
            kept[:] = full[keep]
            kept.flush()
            del kept, full
            os.replace(data_file.with_suffix(".tmp2.npy"), data_file)
            tmp.unlink(missing_ok=True)
        problems = [e for e in errors if e is not None]
        tmp_index = index_file.with_suffix(".json.tmp")
        tmp_index.write_text(json.dumps({"ok": keep.tolist(), "spec": spec.to_dict(),
                                         "problems": [[e.path, e.reason] for e in problems]}))
        os.replace(tmp_index, index_file)
        pixels = np.load(data_file, mmap_mode="r")
        if nbytes <= memory_budget:
            pixels = np.array(pixels)
    else:
        full = np.empty((len(paths),) + spec.shape, dtype=np.uint8)
        errors = _decode_into(full, paths, spec, workers, progress)
        keep = np.array([e is None for e in errors], dtype=bool)
        pixels = full if keep.all() else full[keep]
        problems = [e for e in errors if e is not None]
    return Decoded(pixels, labels_arr[keep], [p for p, k in zip(paths, keep) if k], problems)


def make_dataset(pixels: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False,
                 seed: int = 0, augment=None):
    """A tf.data pipeline of (float32 NHWC raw pixels, int32 labels) batches.

    Shuffling works on indices, so every epoch draws a new order (never `shuffle().cache()`, which
    freezes epoch 1's order), and a memory-mapped cache is read one batch at a time."""
    import tensorflow as tf

    n = len(labels)
    shape = pixels.shape[1:]
    idx = tf.data.Dataset.range(n)
    if shuffle:
        idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    idx = idx.batch(batch_size)
    y_all = tf.constant(labels, dtype=tf.int32)
    if isinstance(pixels, np.memmap):
        def fetch(i):
            order = np.argsort(i)
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            return np.asarray(pixels[i[order]])[inverse]

        def gather(i):
            x = tf.numpy_function(fetch, [i], tf.uint8)
            x.set_shape((None,) + shape)
            return x, tf.gather(y_all, i)
    else:
        x_all = tf.constant(pixels)

        def gather(i):
            return tf.gather(x_all, i), tf.gather(y_all, i)

    ds = idx.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        # sequential on purpose: the random layers draw from one seeded generator, in batch order
        ds = ds.map(lambda x, y: (augment(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)
