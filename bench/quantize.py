#!/usr/bin/env python3
"""int8 against fp32 ONNX: file size, held-out accuracy and images/s at batch 1 and batch 64, for the cnn and
a pretrained mobilenet_v2, both files of each model measured in the same run.

    python bench/quantize.py [--weights-file PATH] [--quick] [--rounds R] [--only cnn|mobilenet_v2]

Models (trained once in --workdir, then reused; seed 42, no early stopping):
  cnn           Fashion-MNIST 28x28 grayscale, 300 training images per class, 10 epochs
  mobilenet_v2  the same images at 96x96, a pretrained backbone (--weights-file, e.g. made by
                ../shared/data/pretrained_backbone.py; else --weights none), 5 head + 2 fine-tune epochs
Both are exported with `imgclf export NAME --quantize int8` (calibration: 300 of the training images,
static QDQ, per-channel); the accuracy figures are that command's agreement check on the test split
(200 Fashion-MNIST test images per class), as recorded in metadata.json.

Speed: each (model, precision, batch) runs in a new child process: one onnxruntime session (CPU
provider, default threads), warm-up, then the same pre-made float32 batches (seeded random pixels:
speed does not depend on the content) for at least `--seconds` seconds; images/s from wall time and
CPU seconds per image from the child's own usage. fp32 and int8 are interleaved (A B A B, `--rounds`
times); medians, and the int8/fp32 ratio of each round. Prints human lines, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CHILD = r"""
import json, os, resource, sys, time
import numpy as np, onnxruntime as ort
path, batch, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
opts = ort.SessionOptions()
opts.log_severity_level = 3
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
shape = [batch] + [int(d) for d in inp.shape[1:]]
x = np.random.default_rng(0).integers(0, 256, size=[8] + shape).astype(np.float32)
for i in range(3):
    sess.run(None, {inp.name: x[i % 8]})
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
n, w0, c0 = 0, time.perf_counter(), cpu()
while time.perf_counter() - w0 < seconds or n < 3:
    sess.run(None, {inp.name: x[n % 8]})
    n += 1
wall, cpus = time.perf_counter() - w0, cpu() - c0
print(json.dumps({"images": n * batch, "wall": wall, "cpu": cpus}))
"""


def _train(registry: Path, data: Path, name: str, args) -> Path:
    path = registry / name / "1"
    if (path / "model.keras").is_file():
        return path
    C.run_child(C.imgclf_cmd("train", str(data), "--registry", str(registry), "--name", name, "--patience", "0",
                             "--seed", "42", "-q", "--format", "json", *args))
    return path


def _quantize(registry: Path, name: str, path: Path) -> dict:
    """`imgclf export NAME --quantize int8`; when the agreement check refuses the file, again with --force (to
    measure its speed all the same: the refusal is recorded in the figures, check.passed false)."""
    if not (path / "model.int8.onnx").is_file():
        cmd = C.imgclf_cmd("export", name, "--registry", str(registry), "--quantize", "int8", "-q")
        r = C.run_child(cmd, check=False)
        if r.rc == 1 and "not saved" in r.stderr:
            print(f"{name}: {r.stderr.strip().splitlines()[-1]}\n  -> again with --force", file=sys.stderr)
            C.run_child(cmd + ["--force"])
        elif r.rc != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.rc}:\n{r.stderr[-3000:]}")
    return json.loads((path / "metadata.json").read_text())


def _speed(model: Path, batch: int, seconds: float) -> dict:
    r = C.run_child([sys.executable, "-c", CHILD, str(model), str(batch), str(seconds)])
    d = r.json_line()
    return {"images_per_s": d["images"] / d["wall"], "cpu_ms_per_image": 1000 * d["cpu"] / d["images"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights-file", default=os.environ.get("IMGCLF_BENCH_BACKBONE", "/tmp/backbone/mnv2.weights.h5"))
    ap.add_argument("--quick", action="store_true", help="30 train / 30 test images per class, 1-2 epochs, 1 round")
    ap.add_argument("--rounds", type=int, default=None, help="A B rounds per (model, batch) (default 3)")
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per child (default 4)")
    ap.add_argument("--only", nargs="+", default=None, choices=["cnn", "mobilenet_v2"])
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()
    per_class, test_per_class = (30, 30) if args.quick else (300, 200)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    work = Path(args.workdir) / ("quantize-quick" if args.quick else "quantize")
    data = work / "data"
    C.make_dataset_folder(args.source, "train", data / "train", per_class)
    C.make_dataset_folder(args.source, "test", data / "test", test_per_class)
    registry = work / "registry"
    pretrained = Path(args.weights_file).is_file()
    recipes = {
        "cnn": ["--epochs", "2" if args.quick else "10"],
        "mobilenet_v2": ["--arch", "mobilenet_v2", "--image-size", "96",
                         "--weights", str(args.weights_file) if pretrained else "none",
                         "--epochs", "1" if args.quick else "5", "--fine-tune-epochs",
                         ("1" if args.quick else "2") if pretrained else "0"],
    }
    lines, record = [], {"rounds": rounds, "seconds_per_child": seconds, "per_class": per_class,
                         "test_per_class": test_per_class, "mobilenet_pretrained": pretrained, "models": {}}
    for name, train_args in recipes.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        path = _train(registry, data, name, train_args)
        meta = _quantize(registry, name, path)
        int8 = meta["int8"]
        check = int8["check"]
        files = {"fp32": path / "model.onnx", "int8": path / "model.int8.onnx"}
        sizes = {k: p.stat().st_size for k, p in files.items()}
        entry = {"train_and_quantize_s": round(time.perf_counter() - t0, 1), "bytes": sizes,
                 "size_ratio": sizes["fp32"] / sizes["int8"], "check": check,
                 "calibration_images": int8["calibration_images"], "speed": {}}
        lines.append(f"{name}: fp32 {sizes['fp32'] / 2**20:.2f} MiB, int8 {sizes['int8'] / 2**20:.2f} MiB "
                     f"({entry['size_ratio']:.2f}x smaller); test accuracy on {check['images']} images: fp32 "
                     f"{100 * check['fp32_accuracy']:.2f}%, int8 {100 * check['int8_accuracy']:.2f}% (drop "
                     f"{check['accuracy_drop_points']:.2f} points), top-1 agreement {100 * check['top1_agreement']:.2f}%, "
                     f"max |dp| {check['max_abs_diff']:.3f}"
                     f"{'' if check['passed'] else ' -- REFUSED by the check (kept with --force to time it)'}")
        for batch in (1, 64):
            runs = {"fp32": [], "int8": []}
            for _ in range(rounds):
                for precision in ("fp32", "int8"):
                    runs[precision].append(_speed(files[precision], batch, seconds))
            per_round = [b["images_per_s"] / a["images_per_s"] for a, b in zip(runs["fp32"], runs["int8"])]
            cpu_round = [a["cpu_ms_per_image"] / b["cpu_ms_per_image"] for a, b in zip(runs["fp32"], runs["int8"])]
            med = {k: {m: C.median([r[m] for r in v]) for m in ("images_per_s", "cpu_ms_per_image")}
                   for k, v in runs.items()}
            entry["speed"][f"batch{batch}"] = {"runs": runs, "median": med, "int8_speedup_per_round": per_round,
                                               "int8_cpu_saving_per_round": cpu_round}
            lines.append(f"  batch {batch:>2}: fp32 {med['fp32']['images_per_s']:8.0f} img/s "
                         f"({med['fp32']['cpu_ms_per_image']:.3f} CPU ms/img), int8 {med['int8']['images_per_s']:8.0f} "
                         f"img/s ({med['int8']['cpu_ms_per_image']:.3f} CPU ms/img); int8/fp32 images/s per round "
                         f"{', '.join(f'{x:.2f}' for x in per_round)}; fp32/int8 CPU per image "
                         f"{', '.join(f'{x:.2f}' for x in cpu_round)}")
        record["models"][name] = entry
    C.emit("quantize", lines, record)


if __name__ == "__main__":
    main()
