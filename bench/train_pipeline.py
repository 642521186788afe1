#!/usr/bin/env python3
"""imgclf's training input path vs the limit of this machine.

    python bench/train_pipeline.py [--quick] [--per-class N] [--epochs E] [--rounds R]
                                   [--format png|jpeg] [--size S] [--rgb]

imgclf:  a folder of image files -> imgclf.data.pipeline.decode (with a cache dir) -> make_dataset -> model.fit
limit:   the same model (get_architecture('cnn').build, same compile, same batch size) trained with
         model.fit on in-memory NumPy arrays (uint8) of the same pixels, decoded beforehand.

Each run is a fresh child process; the runs are interleaved (limit, imgclf with an empty cache, imgclf
with the warm cache, then again) and the medians over rounds are compared, in wall seconds and in CPU
seconds (user+sys of the child, all threads: the steadier figure on a shared machine).

Figures: steady epoch time (the mean of epochs 2..E; target: imgclf within 10% of the limit), first-epoch
cost (scan + decode + cache fill + epoch 1 vs the limit's load + epoch 1; target within 2x), the same
with a warm on-disk cache, and the input pipeline alone (one pass over make_dataset's batches with no
model: the most it could add to an epoch). Prints human lines, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


class _Clock:
    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self):
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _child(args) -> None:
    """One measured training run, in its own process. Prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from imgclf.architectures import get_architecture
    from imgclf.config import TrainConfig
    from imgclf.preprocessing import PreprocessingSpec

    import keras

    spec = PreprocessingSpec(image_size=(args.image_size, args.image_size), channels=args.channels)
    keras.utils.set_random_seed(0)
    model = get_architecture("cnn").build(spec.shape, 10, TrainConfig())
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    epochs = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.clock = _Clock()

        def on_epoch_end(self, epoch, logs=None):
            wall, cpu = self.clock.lap()
            epochs.append({"wall": round(wall, 3), "cpu": round(cpu, 3)})

    out = {"mode": args.child}
    clock = _Clock()
    if args.child == "limit":
        x = np.load(args.pixels)
        y = np.load(args.labels)
        out["load_wall"], out["load_cpu"] = clock.lap()
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
                  callbacks=[Timer()])
    else:
        from imgclf.data.pipeline import decode, make_dataset
        from imgclf.data.scan import scan

        ds = scan(args.data)
        out["scan_wall"], out["scan_cpu"] = clock.lap()
        decoded = decode(ds.paths, ds.labels, spec, cache_dir=args.cache)
        out["load_wall"], out["load_cpu"] = clock.lap()  # scan + decode (or cache read)
        out["from_cache"] = decoded.from_cache
        out["images"] = int(len(decoded.labels))
        train_ds = make_dataset(decoded.pixels, decoded.labels, args.batch_size, shuffle=True, seed=0)
        model.fit(train_ds, epochs=args.epochs, verbose=0, callbacks=[Timer()])
        # the input pipeline alone: one more pass over the same dataset, no model
        pipe = _Clock()
        for _ in train_ds:
            pass
        out["pipeline_only_wall"], out["pipeline_only_cpu"] = pipe.lap()
    out["epochs"] = epochs
    out["total_wall"], out["total_cpu"] = clock.lap()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 images per class, 2 epochs, 1 round")
    ap.add_argument("--per-class", type=int, default=None, help="images per class (default 1500: 15,000 images)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 3)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--format", choices=("png", "jpeg"), default="png")
    ap.add_argument("--size", type=int, default=None, help="resize the files to SxS (default: 28, as is)")
    ap.add_argument("--rgb", action="store_true", help="colour files (a per-image tint), 3 channels")
    ap.add_argument("--source", default=C.DEFAULT_SOURCE, help="Fashion-MNIST class folders (train/, test/)")
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    # child mode (internal)
    ap.add_argument("--child", choices=("limit", "imgclf"), help=argparse.SUPPRESS)
    ap.add_argument("--pixels", help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--channels", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)

    per_class = args.per_class or (300 if args.quick else 1500)
    epochs = args.epochs or (2 if args.quick else 3)
    rounds = args.rounds or (1 if args.quick else 2)
    size = args.size or 28
    channels = 3 if args.rgb else 1
    work = Path(args.workdir)
    tag = f"fmnist-{args.format}-{size}{'-rgb' if args.rgb else ''}-{per_class}pc"
    data = C.make_dataset_folder(args.source, "train", work / "data" / tag, per_class, fmt=args.format,
                                 size=None if size == 28 else size, rgb=args.rgb)

    # the limit's arrays: the very pixels imgclf decodes, in the same order
    import numpy as np

    from imgclf.data.pipeline import decode
    from imgclf.data.scan import scan
    from imgclf.preprocessing import PreprocessingSpec

    spec = PreprocessingSpec(image_size=(size, size), channels=channels)
    ds = scan(data)
    arrays = work / "arrays" / tag
    arrays.mkdir(parents=True, exist_ok=True)
    if not (arrays / "y.npy").exists():
        d = decode(ds.paths, ds.labels, spec)
        np.save(arrays / "x.npy", d.pixels)
        np.save(arrays / "y.npy", d.labels)
    n = len(ds.samples)

    common = [sys.executable, __file__, "--epochs", str(epochs), "--batch-size", str(args.batch_size),
              "--image-size", str(size), "--channels", str(channels)]
    runs = {"limit": [], "cold": [], "warm": []}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for r in range(rounds):
            cache = str(Path(tmp) / f"cache-{r}")
            plan = [("limit", ["--child", "limit", "--pixels", str(arrays / "x.npy"),
                               "--labels", str(arrays / "y.npy")]),
                    ("cold", ["--child", "imgclf", "--data", str(data), "--cache", cache]),
                    ("warm", ["--child", "imgclf", "--data", str(data), "--cache", cache])]
            for name, extra in plan:
                res = C.run_child(common + extra)
                rec = res.json_line()
                rec["process_cpu"], rec["process_wall"], rec["maxrss_mib"] = res.cpu, res.wall, res.maxrss_mib
                if name == "warm" and not rec.get("from_cache"):
                    raise RuntimeError("the second imgclf run did not hit the on-disk cache")
                if name == "cold" and rec.get("from_cache"):
                    raise RuntimeError("the first imgclf run found a cache it should not have")
                runs[name].append(rec)
                print(f"  round {r + 1} {name:5s}: load {rec['load_wall']:.2f}s, epochs "
                      + ", ".join(f"{e['wall']:.1f}s/{e['cpu']:.1f}cpu" for e in rec["epochs"]), file=sys.stderr)

    def steady(rec, key):
        later = [e[key] for e in rec["epochs"][1:]] or [rec["epochs"][0][key]]
        return sum(later) / len(later)

    def first(rec, key):
        return rec[f"load_{key}"] + rec["epochs"][0][key]

    fig = {}
    for key in ("wall", "cpu"):
        for name in runs:
            fig[f"{name}_steady_epoch_{key}"] = C.median([steady(r, key) for r in runs[name]])
            fig[f"{name}_first_epoch_{key}"] = C.median([first(r, key) for r in runs[name]])
        fig[f"decode_fill_{key}"] = C.median([r[f"load_{key}"] for r in runs["cold"]])
        fig[f"decode_warm_{key}"] = C.median([r[f"load_{key}"] for r in runs["warm"]])
    # per-round ratios, then their median: each pair ran back to back under the same load
    ratios = {}
    for key in ("wall", "cpu"):
        ratios[f"steady_epoch_{key}"] = C.median(
            [C.ratio(steady(c, key), steady(l, key)) for c, l in zip(runs["cold"], runs["limit"])]
            + [C.ratio(steady(w, key), steady(l, key)) for w, l in zip(runs["warm"], runs["limit"])])
        ratios[f"first_epoch_cold_{key}"] = C.median(
            [C.ratio(first(c, key), first(l, key)) for c, l in zip(runs["cold"], runs["limit"])])
        ratios[f"first_epoch_warm_{key}"] = C.median(
            [C.ratio(first(w, key), first(l, key)) for w, l in zip(runs["warm"], runs["limit"])])
    for key in ("wall", "cpu"):
        fig[f"pipeline_only_epoch_{key}"] = C.median([r[f"pipeline_only_{key}"] for r in runs["cold"] + runs["warm"]
                                                      if f"pipeline_only_{key}" in r])
    ips = {name: n / fig[f"{name}_steady_epoch_wall"] for name in runs}
    targets = {"steady_epoch_within_10pct": ratios["steady_epoch_wall"] <= 1.10,
               "first_epoch_within_2x": ratios["first_epoch_cold_wall"] <= 2.0}
    lines = [
        f"train_pipeline: {n} images ({args.format}, {size}x{size}x{channels}), cnn, batch {args.batch_size}, "
        f"{epochs} epochs, {rounds} round(s), interleaved",
        f"  steady epoch   limit {fig['limit_steady_epoch_wall']:.2f}s ({ips['limit']:.0f} img/s, "
        f"{fig['limit_steady_epoch_cpu']:.1f} cpu-s)   imgclf {fig['cold_steady_epoch_wall']:.2f}s "
        f"({ips['cold']:.0f} img/s, {fig['cold_steady_epoch_cpu']:.1f} cpu-s)   ratio "
        f"{ratios['steady_epoch_wall']:.3f} wall, {ratios['steady_epoch_cpu']:.3f} cpu  (target <= 1.10: "
        f"{'met' if targets['steady_epoch_within_10pct'] else 'MISSED'})",
        f"  first epoch    limit {fig['limit_first_epoch_wall']:.2f}s   imgclf, empty cache "
        f"{fig['cold_first_epoch_wall']:.2f}s (decode+fill {fig['decode_fill_wall']:.2f}s)   ratio "
        f"{ratios['first_epoch_cold_wall']:.3f} wall, {ratios['first_epoch_cold_cpu']:.3f} cpu  (target <= 2: "
        f"{'met' if targets['first_epoch_within_2x'] else 'MISSED'})",
        f"  warm cache     imgclf {fig['warm_first_epoch_wall']:.2f}s (cache read {fig['decode_warm_wall']:.2f}s)"
        f"   ratio {ratios['first_epoch_warm_wall']:.3f} wall, {ratios['first_epoch_warm_cpu']:.3f} cpu",
        f"  input pipeline alone (one pass over make_dataset's batches, no model): "
        f"{fig['pipeline_only_epoch_wall']:.2f}s, {fig['pipeline_only_epoch_cpu']:.2f} cpu-s = "
        f"{100 * fig['pipeline_only_epoch_cpu'] / fig['cold_steady_epoch_cpu']:.1f}% of an epoch's CPU",
    ]
    C.emit("train_pipeline", lines, {
        "images": n, "format": args.format, "shape": [size, size, channels], "epochs": epochs, "rounds": rounds,
        "batch_size": args.batch_size, "images_per_s": {k: round(v, 1) for k, v in ips.items()},
        "figures": {k: round(v, 3) for k, v in fig.items()}, "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets_met": targets, "runs": runs})


if __name__ == "__main__":
    main()
