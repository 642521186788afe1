#!/usr/bin/env python3
"""What dropping a finished tf.data iterator costs, with tf.data's autotuning model on and off.

Keras makes a new iterator for every epoch and drops the old one at the next epoch's first step. With the
autotuning model on (TensorFlow's default) that drop waits for the autotuner's thread: seconds in which
nothing runs (seen in `imgclf train` on one core as 2-9 s stalls at the first step of an epoch, the bimodal
epoch times of docs/benchmarks.md). imgclf's pipelines (imgclf/data/pipeline.py) turn the model off.

    taskset -c 0 python bench/iterator_teardown.py [--epochs 4] [--images 810] [--size 160]

The pipeline has make_dataset's shape (shuffled indices -> batch -> parallel gather through
numpy_function -> a sequential map -> prefetch), and a fixed matmul stands in for the training step. Both
set-ups run in this process, interleaved, and the script prints each epoch's pass and drop times, then
one JSON line.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def pipeline(tf, pixels, labels, batch, autotune: bool):
    y = tf.constant(labels)
    shape = pixels.shape[1:]

    def gather(i):
        x = tf.numpy_function(lambda i: np.take(pixels, i, axis=0), [i], tf.uint8, stateful=False)
        x.set_shape((None,) + shape)
        return tf.cast(x, tf.float32), tf.gather(y, i)

    ds = tf.data.Dataset.range(len(labels)).shuffle(len(labels), seed=1, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda x, y: (tf.image.flip_left_right(x) * 1.01, y)).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return ds.with_options(options)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--images", type=int, default=810)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    from imgclf.tf_quiet import import_tensorflow

    tf = import_tensorflow()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (args.images, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images).astype(np.int32)
    w = tf.random.normal((1024, 1024))

    @tf.function
    def step(x):
        a = tf.reduce_mean(x) + w
        for _ in range(30):
            a = tf.matmul(a, w) / 1024.0
        return tf.reduce_sum(a)

    sets = {"autotune on": pipeline(tf, pixels, labels, args.batch, True),
            "autotune off": pipeline(tf, pixels, labels, args.batch, False)}
    its = {k: iter(ds) for k, ds in sets.items()}
    passes = {k: [] for k in sets}
    drops = {k: [] for k in sets}
    lines = []
    for epoch in range(args.epochs):
        for k, ds in sets.items():  # interleaved: the machine's noise falls on both
            t0 = time.perf_counter()
            for x, _ in its[k]:
                step(x)
            t1 = time.perf_counter()
            new = iter(ds)
            t2 = time.perf_counter()
            del its[k]  # what Keras does at the next epoch's first step
            t3 = time.perf_counter()
            its[k] = new
            passes[k].append(t1 - t0)
            drops[k].append(t3 - t2)
            lines.append(f"epoch {epoch + 1} {k:12s}: pass {t1 - t0:6.2f} s, dropping the old iterator "
                         f"{t3 - t2:5.2f} s (new one {t2 - t1:.2f} s)")
            print(lines[-1], flush=True)
    on, off = C.median(drops["autotune on"]), C.median(drops["autotune off"])
    share = C.median([d / (p + d) for p, d in zip(passes["autotune on"], drops["autotune on"])])
    lines = [f"median drop: autotune on {on:.2f} s, off {off:.2f} s; with it on the drop is "
             f"{100 * share:.0f}% of an epoch; pass time off/on {C.ratio(C.median(passes['autotune off']), C.median(passes['autotune on'])):.2f}"]
    C.emit("iterator_teardown", lines, {"epochs": args.epochs, "images": args.images, "size": args.size,
                                        "pass_seconds": passes, "drop_seconds": drops})


if __name__ == "__main__":
    main()
