#!/usr/bin/env python3
"""Where a training step's time goes under MultiWorkerMirroredStrategy (issue 33): a bare Keras script
against the same step under the strategy, each worker pinned to a core of its own (`taskset`).

    python bench/distributed_profile.py [--arch cnn|mobilenet_v2] [--image-size N] [--global-batch B]
                                        [--steps S] [--rounds R] [--weights FILE] [--phase head|fine-tune]

Each measured thing runs in a new child process (two for the strategy, on 127.0.0.1 through TF_CONFIG),
interleaved over --rounds; every child builds the model with imgclf's own builder (the architecture at
--image-size, 3 channels for mobilenet_v2, 1 for the cnn), compiles it as imgclf does (Adam, sparse
cross-entropy, accuracy) and runs S steps of `model.fit` on random pixels held in memory (no decoding: the
step alone). Per-step time is the median gap between `on_train_batch_end` calls after the first 5 steps
(tracing excluded). Measured:

- `bare B`: one process, one core, the global batch B: the baseline a user's single run pays;
- `bare B/2`: one process, one core, half the batch: the compute one of two workers has to do;
- `strategy, 1 worker`: MultiWorkerMirroredStrategy on a cluster of one, B/2: the strategy's own per-step
  machinery (distributed dataset, replicated step, Keras' workaround) without a peer to wait for;
- `strategy`: two workers (imgclf's Distribution: its dataset slices and Keras `fit` workaround, synchronised
  BatchNorm as training uses), B/2 per replica;
- `strategy, own BN`: the same with each replica's own BatchNorm statistics;
- `all-reduce`: two workers doing nothing but the all-reduce of a gradient the size of the trainable
  weights, as often as the steps (the communication alone).

Prints the per-step times, the step-time breakdown (the strategy's step = B/2 compute + the rest; the rest
set against the all-reduce alone), the speed-up the strategy gives over `bare B` (ideal: 2x) and one JSON
line. Needs Linux (taskset) and 2+ cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from distributed import free_ports  # noqa: E402  (bench/distributed.py)

WARMUP_STEPS = 5


# ------------------------------------------------------------------------------------- in the child
def _model(args, keras):
    from imgclf.architectures import get_architecture
    from imgclf.config import TrainConfig, resolve

    arch = get_architecture(args.arch)
    pretrained = arch.starts_pretrained(args.weights)
    cfg = resolve(TrainConfig(arch=args.arch, weights=args.weights, image_size=args.image_size),
                  pretrained, n_train=10_000, replicas=1)
    channels = 1 if args.arch == "cnn" else 3
    model = arch.build((args.image_size, args.image_size, channels), 10, cfg)
    if pretrained and args.phase == "fine-tune":
        arch.unfreeze(model, cfg.fine_tune_layers)
    return model, channels


class _StepClock:
    def __init__(self, keras):
        outer = self

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                outer.times.append(time.perf_counter())

        self.times, self.callback = [], Clock()

    def step_ms(self) -> float:
        gaps = [b - a for a, b in zip(self.times[WARMUP_STEPS:], self.times[WARMUP_STEPS + 1:])]
        return 1000 * C.median(gaps)


def child(args) -> None:
    """One measured process: prints {"step_ms": ...} on stdout."""
    import numpy as np

    from imgclf import distribute
    from imgclf.data.pipeline import make_dataset
    from imgclf.tf_quiet import import_keras

    mode = args.child
    dist = distribute.plan("multi-worker" if mode in ("strategy", "own-bn", "allreduce") else "none", 120)
    dist.start()
    keras = import_keras()
    keras.utils.set_random_seed(1)
    with dist.scope():
        model, channels = _model(args, keras)
    batch = args.global_batch if mode == "bare" else args.global_batch // 2     # per replica
    n = args.steps * args.global_batch
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, args.image_size, args.image_size, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    if mode == "allreduce":
        print(json.dumps({"step_ms": _allreduce_ms(dist, model, args.steps)}))
        return
    clock = _StepClock(keras)
    global_batch = dist.global_batch(batch)
    augment = None
    if args.augment != "none":  # as training builds it (imgclf.train._fit_and_evaluate)
        from imgclf.config import AugmentConfig
        from imgclf.data.augment import build_augmenter

        augment = build_augmenter(AugmentConfig.from_options(args.augment), 1)
    ds = dist.dataset(lambda shard: make_dataset(pixels, labels, global_batch, shuffle=True, seed=1,
                                                 augment=augment, shard=shard))
    bn = dist.synchronized_batchnorm(model) if mode == "strategy" else _nothing()
    with dist.fitting(model), bn:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], steps_per_execution=args.steps_per_execution)
        model.fit(ds, epochs=1, callbacks=[clock.callback], verbose=0)
    print(json.dumps({"step_ms": clock.step_ms(), "steps": len(clock.times),
                      "trainable_weights": int(sum(np.prod(w.shape) for w in model.trainable_weights))}))


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _allreduce_ms(dist, model, steps: int) -> float:
    """Median time of one all-reduce (sum over the replicas) of tensors shaped as the trainable weights."""
    import tensorflow as tf

    grads = [tf.ones(w.shape, tf.float32) for w in model.trainable_weights]
    ctx = tf.distribute.get_replica_context

    @tf.function
    def step():
        return dist.strategy.run(lambda: ctx().all_reduce("SUM", grads))

    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = step()
        _ = dist.strategy.experimental_local_results(out)[0][0].numpy()
        times.append(time.perf_counter() - t0)
    return 1000 * C.median(times[WARMUP_STEPS:])


# ------------------------------------------------------------------------------------ in the parent
def _child_cmd(args, mode: str, core: int):
    cmd = ["taskset", "-c", str(core), sys.executable, __file__, "--child", mode, "--arch", args.arch,
           "--image-size", str(args.image_size), "--global-batch", str(args.global_batch), "--steps", str(args.steps),
           "--phase", args.phase, "--steps-per-execution", str(args.steps_per_execution), "--augment", args.augment]
    return cmd + (["--weights", args.weights] if args.weights else [])


def _read(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def run_one(args, global_batch: int) -> dict:
    """`bare`: one process on core 0 (--global-batch given as the batch it trains on)."""
    args = argparse.Namespace(**{**vars(args), "global_batch": global_batch})
    return _read(C.run_child(_child_cmd(args, "bare", 0)).stdout)


def run_pair(args, mode: str, workers: int = 2) -> dict:
    ports = free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for i in range(workers):
            env = C.child_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            procs.append(subprocess.Popen(_child_cmd(args, mode, i), env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=3600) for p in procs]
        for p, (_, err) in zip(procs, outs):
            if p.returncode != 0:
                raise RuntimeError(f"{mode} worker exited {p.returncode}:\n{err[-3000:]}")
        return _read(outs[0][0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--image-size", type=int, default=None, help="default: 28 (cnn), 160 (mobilenet_v2)")
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--weights", default=None, help="a backbone .weights.h5 (mobilenet_v2 starts pretrained)")
    ap.add_argument("--phase", default="head", choices=("head", "fine-tune"))
    ap.add_argument("--steps-per-execution", type=int, default=1, help="Keras' steps_per_execution (all runs)")
    ap.add_argument("--augment", default="none", help="an --augment policy in the input pipeline, as train has it")
    ap.add_argument("--quick", action="store_true", help="12 steps, 1 round (a smoke test)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.image_size = args.image_size or (28 if args.arch == "cnn" else 160)
    if args.child:
        child(args)
        return
    if args.quick:
        args.steps, args.rounds = 12, 1
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        sys.exit("needs 2+ cores and taskset (util-linux)")
    kinds = {"bare B": lambda: run_one(args, args.global_batch),
             "bare B/2": lambda: run_one(args, args.global_batch // 2),
             "strategy, 1 worker": lambda: run_pair(args, "strategy", workers=1),
             "strategy": lambda: run_pair(args, "strategy"),
             "strategy, own BN": lambda: run_pair(args, "own-bn"),
             "all-reduce": lambda: run_pair(args, "allreduce")}
    runs = {k: [] for k in kinds}
    lines = []
    for rnd in range(args.rounds):
        for kind, fn in kinds.items():
            r = fn()
            runs[kind].append(r)
            lines.append(f"round {rnd + 1} {kind:17s}: {r['step_ms']:8.1f} ms a step")
            print(lines[-1], flush=True)
    ms = {k: C.median([r["step_ms"] for r in v]) for k, v in runs.items()}
    rest = ms["strategy"] - ms["bare B/2"]
    machinery = ms["strategy, 1 worker"] - ms["bare B/2"]
    sync_bn = ms["strategy"] - ms["strategy, own BN"]
    lines = [f"{args.arch} at {args.image_size} px, global batch {args.global_batch}, {args.phase} phase, augment "
             f"{args.augment}; "
             f"median ms a step: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()),
             f"strategy step = B/2 compute {ms['bare B/2']:.1f} + the rest {rest:.1f} ms: the strategy's machinery "
             f"alone {machinery:+.1f}, all-reduce of the gradient alone "
             f"{ms['all-reduce']:.1f}, synchronised BatchNorm {sync_bn:+.1f} ms, "
             f"waiting for the slower worker and the rest "
             f"{rest - machinery - ms['all-reduce'] - sync_bn:+.1f}",
             f"speed-up of two workers over one process (bare B / strategy): {C.ratio(ms['bare B'], ms['strategy']):.2f}x "
             f"(ideal {C.ratio(ms['bare B'], ms['bare B/2']):.2f}x: B/2 compute alone)"]
    C.emit("distributed_profile", lines, {"arch": args.arch, "image_size": args.image_size,
                                          "global_batch": args.global_batch, "phase": args.phase,
                                          "step_ms": ms, "runs": runs,
                                          "speedup": C.ratio(ms["bare B"], ms["strategy"])})


if __name__ == "__main__":
    main()
