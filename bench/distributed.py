#!/usr/bin/env python3
"""Multi-worker training against one worker: `imgclf train` alone on one core (`taskset -c 0`,
--distribute none) vs two `imgclf train` workers on 127.0.0.1 (TF_CONFIG), each pinned to a core of its
own (`taskset -c 0` and `-c 1`), with the same global batch and epochs, interleaved (A B A B ...).

    python bench/distributed.py [--per-class N] [--epochs E] [--global-batch B] [--rounds R] [--arch cnn]
    python bench/distributed.py --arch mobilenet_v2 --image-size 160 --weights BACKBONE.weights.h5 \
        [--fine-tune-epochs F] [--per-replica-batch B2]

Throughput is training images per second over the steady epochs (each phase's epoch 2 on: the first
traces the graph), from the `seconds` column of the run's history.csv (decoding and start-up excluded);
the whole command's wall time is reported too. Scaling efficiency = two-worker images/s / (2 x one-worker
images/s). --per-replica-batch B2 gives the two workers B2 each instead of half the global batch (a
larger global batch: fewer steps and all-reduces an epoch, the learning rate scaled as imgclf does).
Prints per-run lines, medians and ratios, then one JSON line. Needs Linux (taskset) and 2+ cores.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def steady_throughput(registry: Path) -> dict:
    hist = sorted(registry.glob("*/1/history.csv"))[0]
    with open(hist, newline="") as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((hist.parent / "metadata.json").read_text())
    images = meta["dataset"]["train"]["images"]
    secs = [float(r["seconds"]) for r in rows]
    # the first epoch of each phase traces its graph (and a fine-tune phase compiles anew)
    steady = [float(r["seconds"]) for i, r in enumerate(rows) if i and r["phase"] == rows[i - 1]["phase"]] or secs
    split = {k: [float(r.get(k) or 0) for r in rows] for k in ("train_seconds", "val_seconds")}
    return {"epoch_seconds": secs, **split, "train_images": images, "images_per_s": images * len(steady) / sum(steady),
            "test_accuracy": meta["metrics"].get("test_accuracy"), "distribute": meta.get("distribute")}


def train_cmd(data: Path, registry: Path, args, batch: int, distribute: str, core: int):
    return ["taskset", "-c", str(core)] + C.imgclf_cmd(
        "train", str(data), "--registry", str(registry), "--arch", args.arch, "--epochs", str(args.epochs),
        "--batch-size", str(batch), "--patience", "0", "--distribute", distribute, "--cluster-timeout", "120",
        "-q", "--format", "json", *args.extra)


def run_single(data: Path, work: Path, args) -> dict:
    reg = Path(tempfile.mkdtemp(dir=work, prefix="reg-single-"))
    try:
        r = C.run_child(train_cmd(data, reg, args, args.global_batch, "none", 0))
        return {"wall": r.wall, "cpu": r.cpu, **steady_throughput(reg)}
    finally:
        shutil.rmtree(reg, ignore_errors=True)


def run_pair(data: Path, work: Path, args) -> dict:
    reg = Path(tempfile.mkdtemp(dir=work, prefix="reg-pair-"))
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, t0 = [], time.perf_counter()
    try:
        for i in (0, 1):
            env = C.child_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            per_replica = args.per_replica_batch or args.global_batch // 2
            procs.append(subprocess.Popen(train_cmd(data, reg, args, per_replica, "multi-worker", i),
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=3600) for p in procs]
        wall = time.perf_counter() - t0
        for p, (out, err) in zip(procs, outs):
            if p.returncode != 0:
                raise RuntimeError(f"worker exited {p.returncode}:\n{err[-3000:]}")
        return {"wall": wall, **steady_throughput(reg)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(reg, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=300, help="Fashion-MNIST training images per class")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=64, help="images per step, all replicas together")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--weights", default=None, help="a backbone .weights.h5 (mobilenet_v2 pretrained)")
    ap.add_argument("--fine-tune-epochs", type=int, default=None)
    ap.add_argument("--per-replica-batch", type=int, default=None, help="default: half the global batch")
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    ap.add_argument("--quick", action="store_true", help="60 per class, 2 epochs, 1 round (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.per_class, args.epochs, args.rounds = 60, 2, 1
    args.extra = []
    for flag, value in (("--image-size", args.image_size), ("--weights", args.weights),
                        ("--fine-tune-epochs", args.fine_tune_epochs)):
        if value is not None:
            args.extra += [flag, str(value)]
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        sys.exit("needs 2+ cores and taskset (util-linux)")
    work = Path(args.workdir)
    root = work / f"fmnist-split-{args.per_class}"
    C.make_dataset_folder(args.source, "train", root / "train", args.per_class)
    C.make_dataset_folder(args.source, "test", root / "test", max(10, args.per_class // 5))
    # no val/: imgclf holds out 10% of train/ (the same images in both set-ups: same seed)
    runs = {"one_worker": [], "two_workers": []}
    lines = []
    for rnd in range(args.rounds):
        for kind, fn in (("one_worker", run_single), ("two_workers", run_pair)):
            r = fn(root, work, args)
            runs[kind].append(r)
            lines.append(f"round {rnd + 1} {kind:11s}: {r['images_per_s']:7.1f} images/s (steady epochs "
                         f"{', '.join(f'{s:.1f}' for s in r['epoch_seconds'][1:])} s), wall {r['wall']:.1f} s, "
                         f"test acc {r['test_accuracy']:.3f}")
            print(lines[-1], flush=True)
            print(f"    each epoch: steps {', '.join(f'{s:.1f}' for s in r['train_seconds'])} s; validation "
                  f"{', '.join(f'{s:.1f}' for s in r['val_seconds'])} s; callbacks "
                  f"{', '.join(f'{e - t - v:.1f}' for e, t, v in zip(r['epoch_seconds'], r['train_seconds'], r['val_seconds']))} s",
                  flush=True)
    one = C.median([r["images_per_s"] for r in runs["one_worker"]])
    two = C.median([r["images_per_s"] for r in runs["two_workers"]])
    per_round = [C.ratio(b["images_per_s"], 2 * a["images_per_s"])
                 for a, b in zip(runs["one_worker"], runs["two_workers"])]
    lines = [f"median images/s: one worker on 1 core {one:.1f}; two workers on 1 core each {two:.1f}",
             f"speed-up {C.ratio(two, one):.2f}x; scaling efficiency {C.ratio(two, 2 * one):.2f} "
             f"(per round {', '.join(f'{x:.2f}' for x in per_round)})"]
    lines.insert(0, f"{args.arch} {' '.join(args.extra)}: one worker batch {args.global_batch}, two workers "
                    f"{args.per_replica_batch or args.global_batch // 2} per replica")
    C.emit("distributed", lines, {"arch": args.arch, "extra": args.extra, "epochs": args.epochs,
                                  "global_batch": args.global_batch, "per_replica_batch": args.per_replica_batch,
                                  "train_images": runs["one_worker"][0]["train_images"], "one_worker_images_per_s": one,
                                  "two_workers_images_per_s": two, "speedup": C.ratio(two, one),
                                  "scaling_efficiency": C.ratio(two, 2 * one), "per_round_efficiency": per_round,
                                  "runs": runs})


if __name__ == "__main__":
    main()
