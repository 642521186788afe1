#!/usr/bin/env python3
"""Heads that look for a small object, on frozen MobileNetV2 feature maps (issue 34): is the pooling of the
last map (14 x 14 at 448 px) what loses the object on set B?

    python bench/photo_heads.py SPLIT --weights FILE --eval DIR [--size 448] [--heads avg max locmax lse attn]

The backbone (the --weights file, frozen) runs once per image and its mirror, at --size px (decoded as `imgclf
train` decodes: imgclf.preprocessing, stretched); then each head is trained on the training maps and their
mirrors (Adam 1e-3, batch 32, --epochs, dropout 0.2 on the map), seeds 1 and 2, and scored on val and every
--eval folder (plain, and with the mirror averaged):

    avg     global average pooling + linear (the default's head, "gap")
    max     global max pooling + linear
    locmax  a linear classifier at every location (1x1 conv), class logits max-pooled over the map
    lse     the same, log-sum-exp pooled (r = 5: between mean and max)
    attn    attention pooling (a 1x1 conv tanh(128) -> 1 weight a location, softmax over the map; Ilse et al. 2018)

Prints one line per head, then one JSON line with the command.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

HEADS = ("avg", "max", "locmax", "lse", "attn")
LSE_R = 5.0


def feature_maps(size, weights, pixels):
    import keras
    import numpy as np

    from imgclf.architectures.mobilenet import _make_backbone

    backbone = _make_backbone("mobilenet_v2", (size, size, 3), 1.0, weights)
    inp = keras.Input((size, size, 3))
    model = keras.Model(inp, backbone(keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp), training=False))
    batch = max(4, int(32 * (224 / size) ** 2))
    return np.concatenate([np.asarray(model(pixels[i:i + batch].astype("float32"), training=False))
                           for i in range(0, len(pixels), batch)]).astype("float16")


def build_head(kind, shape, classes, seed):
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(seed)
    h, w, c = shape
    inp = keras.Input(shape)
    x = layers.Dropout(0.2)(inp)
    if kind in ("avg", "max"):
        x = (layers.GlobalAveragePooling2D() if kind == "avg" else layers.GlobalMaxPooling2D())(x)
        logits = layers.Dense(classes)(x)
    elif kind in ("locmax", "lse"):
        z = layers.Reshape((h * w, classes))(layers.Conv2D(classes, 1)(x))
        if kind == "locmax":
            logits = layers.Lambda(lambda t: tf.reduce_max(t, axis=1))(z)
        else:
            logits = layers.Lambda(lambda t: (tf.reduce_logsumexp(LSE_R * t, axis=1) - np.log(h * w)) / LSE_R)(z)
    elif kind == "attn":
        a = layers.Reshape((h * w,))(layers.Conv2D(1, 1)(layers.Conv2D(128, 1, activation="tanh")(x)))
        pooled = layers.Dot(axes=1)([layers.Softmax()(a), layers.Reshape((h * w, c))(x)])
        logits = layers.Dense(classes)(pooled)
    else:
        raise ValueError(f"unknown head {kind!r}; known: {', '.join(HEADS)}")
    model = keras.Model(inp, layers.Softmax()(logits))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("split")
    ap.add_argument("--weights", required=True, help="a MobileNetV2 backbone .weights.h5")
    ap.add_argument("--eval", nargs="*", default=[])
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from photo_levers import decode_folder

    names = sorted(p.name for p in (Path(args.split) / "train").iterdir() if p.is_dir())
    folders = {"train": Path(args.split) / "train", "val": Path(args.split) / "val", **{e: e for e in args.eval}}
    maps = {}
    for name, folder in folders.items():
        px, y = decode_folder(folder, args.size, names)
        maps[name] = (feature_maps(args.size, args.weights, px), feature_maps(args.size, args.weights, px[:, :, ::-1]), y)
    (x, xf, y), classes = maps["train"], len(names)
    lines, rows = [f"photo heads on {args.split} at {args.size} px (frozen maps; mean of seeds 1, 2):"], []
    for kind in args.heads:
        row = {"head": kind}
        for seed in (1, 2):
            model = build_head(kind, x.shape[1:], classes, seed)
            hist = model.fit(np.concatenate([x, xf]).astype("float32"), np.concatenate([y, y]), batch_size=32,
                             epochs=args.epochs, verbose=0)
            row.setdefault("train_accuracy", []).append(float(hist.history["accuracy"][-1]))
            for name in list(folders)[1:]:
                ex, exf, ey = maps[name]
                p = model.predict(ex.astype("float32"), verbose=0)
                pf = model.predict(exf.astype("float32"), verbose=0)
                row.setdefault(name, []).append(float((p.argmax(1) == ey).mean()))
                row.setdefault(name + " tta", []).append(float(((p + pf).argmax(1) == ey).mean()))
        rows.append(row)
        lines.append(f"  {kind:7s} " + "  ".join(f"{k}: {np.mean(v):.3f} ({' '.join(f'{a:.3f}' for a in v)})"
                                                  for k, v in row.items() if k != "head"))
        print(lines[-1], file=sys.stderr, flush=True)
    C.emit("photo_heads", lines, {"split": args.split, "size": args.size, "epochs": args.epochs,
                                  "command": "python bench/photo_heads.py " + " ".join(sys.argv[1:]),
                                  "results": rows})


if __name__ == "__main__":
    main()
