#!/usr/bin/env python3
"""Transfer learning on a small data set: test accuracy of cnn vs mobilenet_v2 --weights none vs
mobilenet_v2 with a pretrained backbone file, each without and with `--augment light`.

    python bench/transfer.py --weights-file PATH [--quick] [--per-class N] [--test-per-class N]

PATH is a MobileNetV2 backbone (no top) .weights.h5, e.g. made offline by
../shared/data/pretrained_backbone.py (for benchmarks only; never commit or ship it).

Data: N training images per class of Fashion-MNIST (default 100: 1,000 images, 10% held out for
validation by imgclf) and M test images per class from its test set (default 200: 2,000 images), as a
split root (train/, test/); imgclf reports the test accuracy. Fashion-MNIST is grayscale and 28x28:
MobileNet gets it upscaled to 96x96 and repeated to 3 channels inside the model.

Recipes (each `imgclf train` in a new process, seed 42, no early stopping):
  cnn            the default size chosen from the data (28x28), --epochs 15
  mobilenet_v2   --image-size 96; pretrained: --epochs 5 (head, backbone frozen) + --fine-tune-epochs 2
                 (top 30% of the backbone, lr/10); random init: the whole network, --epochs 7
Augmentation `light` = horizontal flip, rotate 5 deg, shift 5%, zoom 5%. Horizontal flips are right
for clothes (a mirrored shirt is a shirt); vertical flips would not be, and for digits or text use
--flip none. Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights-file", default=os.environ.get("IMGCLF_BENCH_BACKBONE", "/tmp/backbone/mnv2.weights.h5"),
                    help="pretrained MobileNetV2 backbone .weights.h5 (default $IMGCLF_BENCH_BACKBONE or "
                         "/tmp/backbone/mnv2.weights.h5)")
    ap.add_argument("--quick", action="store_true", help="30 train / 30 test images per class, fewer epochs")
    ap.add_argument("--per-class", type=int, default=None, help="training images per class (default 100)")
    ap.add_argument("--test-per-class", type=int, default=None, help="test images per class (default 200)")
    ap.add_argument("--image-size", type=int, default=96, help="MobileNet input size (96..224)")
    ap.add_argument("--head-epochs", type=int, default=None, help="mobilenet_v2 head epochs (default 5)")
    ap.add_argument("--fine-tune-epochs", type=int, default=None, help="mobilenet_v2 fine-tune epochs (default 2)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these recipes (names as in the table)")
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()
    if not Path(args.weights_file).is_file():
        sys.exit(f"{args.weights_file}: no pretrained backbone file; make one with "
                 "python ../shared/data/pretrained_backbone.py OUT.weights.h5 and pass --weights-file OUT.weights.h5")
    per_class = args.per_class or (30 if args.quick else 100)
    test_per_class = args.test_per_class or (30 if args.quick else 200)
    cnn_epochs, head_epochs, ft_epochs = (3, 1, 1) if args.quick else (15, 5, 2)
    head_epochs = args.head_epochs if args.head_epochs is not None else head_epochs
    ft_epochs = args.fine_tune_epochs if args.fine_tune_epochs is not None else ft_epochs
    work = Path(args.workdir)
    tag = "" if os.path.abspath(args.source) == os.path.abspath(C.DEFAULT_SOURCE) else \
        "-" + hashlib.sha1(os.path.abspath(args.source).encode()).hexdigest()[:8]
    root = work / "data" / f"transfer-{per_class}-{test_per_class}{tag}"   # one folder per source
    C.make_dataset_folder(args.source, "train", root / "train", per_class)
    C.make_dataset_folder(args.source, "test", root / "test", test_per_class)

    mnv2 = ["--arch", "mobilenet_v2", "--image-size", str(args.image_size)]
    recipes = {
        "cnn": ["--epochs", str(cnn_epochs)],
        # random init has no head phase: the whole network trains for as many epochs as both phases
        "mobilenet_v2 (random init)": mnv2 + ["--weights", "none", "--epochs", str(head_epochs + ft_epochs),
                                              "--fine-tune-epochs", "0"],
        "mobilenet_v2 (pretrained)": mnv2 + ["--weights", args.weights_file, "--epochs", str(head_epochs),
                                             "--fine-tune-epochs", str(ft_epochs)],
    }
    results = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for name, extra in recipes.items():
            for augment in ("none", "light"):
                label = f"{name} + augment {augment}"
                if args.only and name not in args.only and label not in args.only:
                    continue
                cmd = C.imgclf_cmd("train", str(root), "--registry", str(Path(tmp) / "registry"), "--name",
                                   "transfer", "--patience", "0", "--seed", "42", "--augment", augment,
                                   "--format", "json", "-q", *extra)
                res = C.run_child(cmd)
                summary = json.loads(res.stdout)
                m = summary["metrics"]
                results.append({"recipe": name, "augment": augment, "test_accuracy": m.get("test_accuracy"),
                                "val_accuracy": m.get("val_accuracy"), "train_accuracy": m.get("last_epoch_train_accuracy", m.get("train_accuracy")),
                                "epochs_run": m.get("epochs_run"), "wall_s": round(res.wall, 1),
                                "cpu_s": round(res.cpu, 1), "command": "imgclf " + " ".join(cmd[1:])})
                print(f"  {label}: test accuracy {m.get('test_accuracy', float('nan')):.4f} "
                      f"({res.wall:.0f}s, {res.cpu:.0f} cpu-s)", file=sys.stderr)

    by = {(r["recipe"], r["augment"]): r for r in results}
    cnn_best = max((r["test_accuracy"] for r in results if r["recipe"] == "cnn"), default=None)
    pre_best = max((r["test_accuracy"] for r in results if r["recipe"] == "mobilenet_v2 (pretrained)"), default=None)
    lines = [f"transfer: Fashion-MNIST, {per_class} train images per class (10% held out for val), "
             f"{test_per_class} test images per class; cnn at 28x28 ({cnn_epochs} epochs), mobilenet_v2 at "
             f"{args.image_size}x{args.image_size} ({head_epochs} head + {ft_epochs} fine-tune epochs)",
             f"  {'recipe':30s} {'augment none':>14s} {'augment light':>14s}   cpu-s (none/light)"]
    for name in recipes:
        a, b = by.get((name, "none")), by.get((name, "light"))
        if not a and not b:
            continue
        fmt = lambda r: f"{r['test_accuracy']:.4f}" if r and r["test_accuracy"] is not None else "-"  # noqa: E731
        lines.append(f"  {name:30s} {fmt(a):>14s} {fmt(b):>14s}   "
                     f"{a['cpu_s'] if a else '-'}/{b['cpu_s'] if b else '-'}")
    if cnn_best is not None and pre_best is not None:
        lines.append(f"  best pretrained mobilenet_v2 - best cnn: {pre_best - cnn_best:+.4f} test accuracy")
    C.emit("transfer", lines, {"train_per_class": per_class, "test_per_class": test_per_class,
                               "image_size": args.image_size, "results": results,
                               "pretrained_minus_cnn": None if cnn_best is None or pre_best is None
                               else round(pre_best - cnn_best, 4)})


if __name__ == "__main__":
    main()
