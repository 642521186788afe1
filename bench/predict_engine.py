#!/usr/bin/env python3
"""predict's streaming engine alone (imgclf.predict.predict_batches), in one process, against a bare
onnxruntime loop over pre-decoded arrays of the same images.

    python bench/predict_engine.py [--images N] [--rounds R] [--model M --registry R]
                                   [--baseline-module FILE] [--photos DIR --image-size S]

`predict_throughput.py` measures whole `imgclf predict` processes; this script leaves out what every
process pays once (Python start-up, imports, loading the model) and shows what the engine adds per
image. Interleaved in the same process, `--rounds` times (medians), wall and CPU seconds:

  limit    onnxruntime session.run over float32 arrays decoded beforehand (batch 32)
  decode   preprocessing.load_image on every file, one thread (what the limit never pays)
  engine   predict_batches: paths in, result rows out (decode + model + rows)
  baseline the same through another copy of imgclf/predict.py (--baseline-module,
           e.g. `git show REV:imgclf/predict.py > /tmp/old_predict.py`), for before/after figures

It also prints the floor on this machine: (limit CPU + decode CPU) / cores, the wall time of a
perfectly packed engine. With --photos DIR a stand-in model (no onnxruntime) runs on the photos at
--image-size, to show decoding in one thread vs several (the parallel path for slow decoding).
Prints human lines, then one JSON line. Without --model it trains and exports a cnn (1 epoch, 300
Fashion-MNIST images per class) in a temporary registry.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _load_module(path: str):
    spec = importlib.util.spec_from_file_location("imgclf_baseline_predict", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_model(ref, paths, rounds, baseline) -> dict:
    import numpy as np

    from imgclf.predict import OnnxClassifier, predict_batches
    from imgclf.preprocessing import load_image

    clf = OnnxClassifier(ref)
    x = np.stack([load_image(p, clf.spec) for p in paths]).astype(np.float32)
    clf(x[:32])  # warm the session
    runs = {"limit": [], "decode": [], "engine": []}
    if baseline:
        runs["baseline"] = []
    for _ in range(rounds):
        runs["limit"].append(_timed(lambda: [clf(x[i:i + 32]) for i in range(0, len(x), 32)]))
        runs["decode"].append(_timed(lambda: [load_image(p, clf.spec) for p in paths]))
        runs["engine"].append(_timed(lambda: [r for b in predict_batches(clf, paths) for r in b]))
        if baseline:
            if hasattr(baseline, "predict_batches"):
                runs["baseline"].append(_timed(lambda: [r for b in baseline.predict_batches(clf, paths) for r in b]))
            else:  # copies of predict.py before 49c342d
                runs["baseline"].append(_timed(lambda: list(baseline.predict_stream(clf, paths))))
    return runs


def bench_photos(photo_dir, size, rounds) -> dict:
    import numpy as np

    import imgclf.data.files as PL
    import imgclf.predict as P
    from imgclf.data.scan import walk_files, is_image_name
    from imgclf.preprocessing import PreprocessingSpec

    class StandIn:
        backend = "stand-in"
        spec = PreprocessingSpec(image_size=(size, size), channels=3)
        class_names = ["a", "b"]

        def __call__(self, batch):
            return np.full((len(batch), 2), 0.5, np.float32)

    paths = [p for p in walk_files(photo_dir) if is_image_name(os.path.basename(p))]
    default = PL.PARALLEL_DECODE_MIN_S
    runs = {"one_thread": [], "auto": []}
    try:
        for _ in range(rounds):
            PL.PARALLEL_DECODE_MIN_S = float("inf")
            runs["one_thread"].append(_timed(lambda: [r for b in P.predict_batches(StandIn(), paths) for r in b]))
            PL.PARALLEL_DECODE_MIN_S = default
            runs["auto"].append(_timed(lambda: [r for b in P.predict_batches(StandIn(), paths) for r in b]))
    finally:
        PL.PARALLEL_DECODE_MIN_S = default
    return {"images": len(paths), "runs": runs}


def _med(runs, k):
    return C.median([r[k] for r in runs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", help="an exported model (NAME, NAME:VERSION or path) instead of training")
    ap.add_argument("--registry", help="registry of --model")
    ap.add_argument("--baseline-module", help="another imgclf/predict.py to compare with")
    ap.add_argument("--photos", help="a folder of photos for the one-thread vs parallel decoding rows")
    ap.add_argument("--image-size", type=int, default=224, help="target size for --photos")
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()

    from imgclf.data.scan import scan
    from imgclf.registry import resolve

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n = args.images
    test = C.make_dataset_folder(args.source, "test", work / "data" / f"fmnist-test-{n // 10}pc", n // 10)
    paths = scan(test).paths
    baseline = _load_module(args.baseline_module) if args.baseline_module else None
    cores = os.cpu_count() or 1
    record = {"images": len(paths), "rounds": args.rounds, "cores": cores}
    lines = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        if args.model:
            ref = resolve(args.registry, args.model)
        else:
            train = C.make_dataset_folder(args.source, "train", work / "data" / "fmnist-png-28-300pc", 300)
            registry = Path(tmp) / "registry"
            ref = resolve(registry, C.train_and_export(registry, train, "bench-engine"))
        runs = bench_model(ref, paths, args.rounds, baseline)
    limit_w, limit_c = _med(runs["limit"], 0), _med(runs["limit"], 1)
    floor = (limit_c + _med(runs["decode"], 1)) / cores
    record["model"] = {"arch": ref.metadata.get("arch"), "shape": ref.metadata["preprocessing"]["image_size"]}
    record["figures"] = {k: {"wall": round(_med(v, 0), 3), "cpu": round(_med(v, 1), 3)} for k, v in runs.items()}
    record["ratios_vs_limit"] = {k: {"wall": round(C.median([a[0] / b[0] for a, b in zip(v, runs["limit"])]), 3),
                                     "cpu": round(C.median([a[1] / b[1] for a, b in zip(v, runs["limit"])]), 3)}
                                 for k, v in runs.items() if k != "limit"}
    record["floor_wall"] = round(floor, 3)
    record["floor_ratio"] = round(floor / limit_w, 3)
    record["runs"] = runs
    lines.append(f"predict_engine [{record['model']['arch']} {record['model']['shape']}]: {len(paths)} images, "
                 f"{args.rounds} rounds interleaved in one process, {cores} cores")
    for k in runs:
        f, r = record["figures"][k], record["ratios_vs_limit"].get(k)
        lines.append(f"  {k:9s} {f['wall']:.3f}s  {f['cpu']:.3f} cpu-s" +
                     (f"   ratio {r['wall']:.3f} wall, {r['cpu']:.3f} cpu" if r else "   (the limit)"))
    lines.append(f"  floor: (limit cpu + decode cpu) / {cores} cores = {floor:.3f}s, "
                 f"{record['floor_ratio']:.3f}x the limit's wall: no engine that decodes can go below it here")
    if args.photos:
        ph = bench_photos(args.photos, args.image_size, args.rounds)
        one, auto = ph["runs"]["one_thread"], ph["runs"]["auto"]
        ph["ratio_auto_vs_one_thread_wall"] = round(C.median([a[0] / b[0] for a, b in zip(auto, one)]), 3)
        record["photos"] = ph
        lines.append(f"  photos ({ph['images']} from {args.photos} to {args.image_size}x{args.image_size}, "
                     f"stand-in model): one decoding thread {_med(one, 0):.2f}s, automatic "
                     f"{_med(auto, 0):.2f}s ({ph['ratio_auto_vs_one_thread_wall']:.2f}x)")
    C.emit("predict_engine", lines, record)


if __name__ == "__main__":
    main()
