#!/usr/bin/env python3
"""Which input size, memory weight and test-time augmentation suit photos with small objects: a cheap probe
on the frozen pretrained backbone (no fine-tuning), one decode + one forward pass per image and size.

    python bench/photo_probe.py --weights BACKBONE.weights.h5 --train SPLIT/train \\
        --score SPLIT/val DEV [...] [--sizes 160 224 288 320] [--weights-to-score 0 0.25 0.5]

For each size: every image is decoded by imgclf's own preprocessing (imgclf.preprocessing.load_image:
EXIF orientation, stretched to SIZE x SIZE) and run through MobileNetV2 with the given backbone weights and
global average pooling (the features the head and the memory of `imgclf train` see); its left-right mirror
too. A softmax head (scikit-learn's multinomial logistic regression, the Keras head's model without its
dropout) is fitted on the --train features; the memory's vote is imgclf/memory.py's (cosine similarity,
softmax at MEMORY_TEMPERATURE, summed per class). Each --score folder is scored by blend weight W
((1 - W) * head + W * vote, `--memory W`) without and with TTA (image and mirror averaged). Use it on
validation / development folders only; never on the held-out test folders.

Prints one line per size, folder and weight (accuracy TTA off / on), CPU seconds of the forward passes
per size, then one JSON line.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def features(size: int, weights: str, folders, names):
    """{folder: (features, mirror features, labels)} at `size`, and the CPU seconds it took."""
    import keras
    import numpy as np

    from imgclf.architectures.mobilenet import _make_backbone
    from imgclf.data.pipeline import decode
    from imgclf.data.scan import scan
    from imgclf.preprocessing import PreprocessingSpec

    t0 = cpu()
    spec = PreprocessingSpec(image_size=(size, size), channels=3)
    backbone = _make_backbone("mobilenet_v2", (size, size, 3), 1.0, weights)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
    net = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(backbone(x, training=False)))

    def run(pixels):
        return np.concatenate([np.asarray(net(np.asarray(pixels[i:i + 64], dtype=np.float32), training=False))
                               for i in range(0, len(pixels), 64)])

    out = {}
    for folder in folders:
        ds = scan(Path(folder), class_names=names)
        d = decode(ds.paths, ds.labels, spec)
        pixels = np.asarray(d.pixels)
        out[folder] = (run(pixels), run(pixels[:, :, ::-1]), np.asarray(d.labels))
    return out, cpu() - t0


def vote(train_f, train_y, f, classes, temperature):
    import numpy as np

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    s = unit(f) @ unit(train_f).T
    w = np.exp((s - s.max(1, keepdims=True)) / temperature)
    v = w @ np.eye(classes)[train_y]
    return v / v.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="a MobileNetV2 backbone .weights.h5 (or imagenet)")
    ap.add_argument("--train", required=True, help="class folders the head and the memory learn from")
    ap.add_argument("--score", nargs="+", required=True, help="validation / development class folders")
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 224, 288, 320])
    ap.add_argument("--weights-to-score", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from imgclf.config import MEMORY_TEMPERATURE
    from imgclf.data.scan import scan

    names = scan(Path(args.train)).class_names
    lines, rows = [f"train {args.train} ({len(names)} classes); accuracy TTA off / on"], []
    for size in args.sizes:
        feats, secs = features(size, args.weights, [args.train] + args.score, names)
        tf_, tm, ty = feats[args.train]
        # features of the training images and of their mirrors (what flip augmentation shows the head)
        head = LogisticRegression(C=1.0, max_iter=2000).fit(np.concatenate([tf_, tm]), np.concatenate([ty, ty]))
        lines.append(f"size {size}: {secs:.0f} CPU-s to decode and embed {sum(len(v[2]) for v in feats.values())} "
                     "images and their mirrors")
        for folder in args.score:
            f, m, y = feats[folder]
            h, hm = head.predict_proba(f), head.predict_proba(m)
            v, vm = (vote(tf_, ty, a, len(names), MEMORY_TEMPERATURE) for a in (f, m))
            for w in args.weights_to_score:
                plain = float((((1 - w) * h + w * v).argmax(1) == y).mean())
                tta = float((((1 - w) * (h + hm) + w * (v + vm)).argmax(1) == y).mean())
                rows.append({"size": size, "folder": folder, "weight": w, "accuracy": plain, "accuracy_tta": tta,
                             "images": len(y), "cpu_s": secs})
                lines.append(f"  {size} px {folder}: W {w:.2f}  {plain:.4f} / {tta:.4f}  ({len(y)} images)")
    C.emit("photo_probe", lines, {"train": args.train, "weights": args.weights, "results": rows})


if __name__ == "__main__":
    main()
