#!/usr/bin/env python3
"""A/B of the training input pipeline: imgclf's make_dataset (batches gathered from the NumPy array with
numpy_function) vs a tf.constant + tf.gather pipeline, training the same cnn on the same in-memory arrays.

    python bench/gather_ab.py [--arrays DIR] [--rounds R]

DIR holds x.npy (uint8 NHWC) and y.npy, as bench/train_pipeline.py leaves them
(default /tmp/imgclf-bench/arrays/fmnist-png-28-1500pc). Each run is a new process, 3 epochs, runs
interleaved; prints each run's epochs, the medians of the steady epochs (2..3), then one JSON line.
"""
import argparse, json, subprocess, sys
from pathlib import Path
CHILD = r'''
import sys, time, json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
import numpy as np, keras, tensorflow as tf
from imgclf.architectures import get_architecture
from imgclf.config import TrainConfig
from imgclf.data.pipeline import make_dataset
mode = sys.argv[1]
x = np.load(sys.argv[2] + "/x.npy"); y = np.load(sys.argv[2] + "/y.npy").astype(np.int32)
keras.utils.set_random_seed(0)
model = get_architecture("cnn").build(x.shape[1:], 10, TrainConfig())
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
if mode == "numpy":
    ds = make_dataset(x, y, 64, shuffle=True, seed=0)
else:
    n = len(y); X = tf.constant(x); Y = tf.constant(y)
    ds = tf.data.Dataset.range(n).shuffle(n, seed=0, reshuffle_each_iteration=True).batch(64)
    ds = ds.map(lambda i: (tf.cast(tf.gather(X, i), tf.float32), tf.gather(Y, i)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
times = []
class T(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = (time.perf_counter(), time.process_time())
    def on_epoch_end(self, e, logs=None): times.append((time.perf_counter()-self.t[0], time.process_time()-self.t[1]))
model.fit(ds, epochs=3, verbose=0, callbacks=[T()])
print(json.dumps(times))
'''
ap = argparse.ArgumentParser()
ap.add_argument("--arrays", default="/tmp/imgclf-bench/arrays/fmnist-png-28-1500pc")
ap.add_argument("--rounds", type=int, default=2)
args = ap.parse_args()
repo = str(Path(__file__).resolve().parent.parent)
res = {"numpy": [], "constant": []}
for r in range(args.rounds):
    for mode in ("numpy", "constant"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, args.arrays], capture_output=True, text=True, cwd=repo)
        t = json.loads(out.stdout.strip().splitlines()[-1])
        res[mode] += t[1:]
        print(mode, [f"{w:.1f}s/{c:.1f}cpu" for w, c in t], flush=True)
import statistics as S
med = {m: {"wall": S.median(w for w, c in res[m]), "cpu": S.median(c for w, c in res[m])} for m in res}
for m in res:
    print(m, "steady median wall %.2f cpu %.2f" % (med[m]["wall"], med[m]["cpu"]))
print("ratio numpy/constant: wall %.3f cpu %.3f" % (med["numpy"]["wall"] / med["constant"]["wall"],
                                                    med["numpy"]["cpu"] / med["constant"]["cpu"]))
print(json.dumps({"bench": "gather_ab", "medians": med, "runs": res}))
