#!/usr/bin/env python3
"""The head-phase levers of the pretrained default on a photo-like set, in one process on features computed
once: input size, training augmentation (offline copies through imgclf's own augmenter), the memory's weight
and test-time augmentation (left-right mirror averaged).

    python bench/photo_levers.py SPLIT --weights FILE [--eval DIR ...] [--sizes 160 224] \\
        [--augments none style crop] [--copies 4] [--weights-to-score 0 0.25 0.5 1] [--pools avg max gem avgmax]

SPLIT has train/ and val/ (imgclf split); each --eval DIR is scored too (a development set; a held-out set
only to report). Pixels are decoded as `imgclf train` decodes them (imgclf.preprocessing, stretched to S x S);
the backbone is MobileNetV2 with the --weights file, frozen, pooled as --pools says (avg: global average, the default's
head input; max; gem: generalised mean, p = 3; avgmax: both concatenated). For each size and augmentation policy the training features are those of the images plus --copies
augmented copies (the policy as `imgclf train --augment P` builds it); the head is a softmax regression
(scikit-learn, lbfgs, C=1) standing in for the default's 6 head epochs; the memory is imgclf's vote (cosine
similarity / MEMORY_TEMPERATURE over the un-augmented training features, softmax, summed per class) blended
at weight W as `--memory W` blends it. Fine-tuning is not covered (bench/photo_defaults.py runs `imgclf
train` for that). Choose on val and development folders; prints one line per setting, then one JSON line.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def decode_folder(folder, size, names):
    import numpy as np

    from imgclf.data.pipeline import decode
    from imgclf.data.scan import scan
    from imgclf.preprocessing import PreprocessingSpec

    ds = scan(Path(folder), class_names=names)
    d = decode(ds.paths, ds.labels, PreprocessingSpec(image_size=(size, size), channels=3))
    return np.asarray(d.pixels), np.asarray(d.labels)


#: pooling of the backbone's last feature map: "avg" (the default's "gap"), "max", "gem" (generalised mean,
#: p = GEM_P: between the two; Radenovic et al. 2018), "avgmax" (avg and max concatenated)
POOLS = ("avg", "max", "gem", "avgmax")
GEM_P = 3.0


def pool(maps, how):
    """(n, h, w, c) feature maps -> (n, c) (or 2c for avgmax) pooled features."""
    import numpy as np

    if how == "avg":
        return maps.mean(axis=(1, 2))
    if how == "max":
        return maps.max(axis=(1, 2))
    if how == "gem":
        return np.power(np.power(np.maximum(maps, 1e-6), GEM_P).mean(axis=(1, 2)), 1.0 / GEM_P)
    if how == "avgmax":
        return np.concatenate([maps.mean(axis=(1, 2)), maps.max(axis=(1, 2))], axis=1)
    raise ValueError(f"unknown pooling {how!r}; known: {', '.join(POOLS)}")


def featurizer(size, weights, pools=("avg",)):
    """A function pixels -> {pooling: features}: the frozen backbone run once, each pooling taken from its map."""
    import keras

    from imgclf.architectures.mobilenet import _make_backbone

    backbone = _make_backbone("mobilenet_v2", (size, size, 3), 1.0, weights)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
    model = keras.Model(inp, backbone(x, training=False))

    # 32 images a batch at 224 px, fewer above: at 448 px a batch of 32 ran out of the machine's 24 GiB
    batch = max(4, int(32 * (224 / size) ** 2))

    def features(pixels):
        import numpy as np
        out = {p: [] for p in pools}
        for i in range(0, len(pixels), batch):
            maps = np.asarray(model(pixels[i:i + batch].astype("float32"), training=False))
            for p in pools:
                out[p].append(pool(maps, p))
        return {p: np.concatenate(v) for p, v in out.items()}
    return features


def augmented(pixels, policy, copies, seed):
    import numpy as np

    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter

    aug = build_augmenter(AugmentConfig.from_options(policy), seed)
    if aug is None or copies == 0:
        return []
    return [np.concatenate([np.asarray(aug(pixels[i:i + 32].astype("float32"), training=True))
                            for i in range(0, len(pixels), 32)]) for _ in range(copies)]


def vote(train_f, train_y, f, classes):
    import numpy as np

    from imgclf.config import MEMORY_TEMPERATURE

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    s = unit(f) @ unit(train_f).T
    w = np.exp((s - s.max(axis=1, keepdims=True)) / MEMORY_TEMPERATURE)
    v = w @ np.eye(classes)[train_y]
    return v / v.sum(axis=1, keepdims=True)


def score_setting(feat, train, evals, policy, copies, weights_to_score, seed):
    """Rows of accuracies for one (size, policy): each pooling x eval folder x memory weight x TTA."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    (px, y), classes = train, int(train[1].max()) + 1
    base = feat(px)
    extra = [feat(a) for a in augmented(px, policy, copies, seed)]
    scored = {name: (feat(epx), feat(epx[:, :, ::-1]), ey) for name, (epx, ey) in evals.items()}
    rows = []
    for how, base_f in base.items():
        head = LogisticRegression(C=1.0, max_iter=2000).fit(np.concatenate([base_f, *(e[how] for e in extra)]),
                                                            np.concatenate([y] * (1 + len(extra))))
        for name, (f, ff, ey) in scored.items():
            f, ff = f[how], ff[how]
            ph, pv = head.predict_proba(f), vote(base_f, y, f, classes)
            fh, fv = head.predict_proba(ff), vote(base_f, y, ff, classes)
            for w in weights_to_score:
                rows.append({"pool": how, "eval": name, "memory": w,
                             "accuracy": float((((1 - w) * ph + w * pv).argmax(1) == ey).mean()),
                             "accuracy_tta": float((((1 - w) * (ph + fh) + w * (pv + fv)).argmax(1) == ey).mean())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("split")
    ap.add_argument("--weights", required=True, help="a MobileNetV2 backbone .weights.h5")
    ap.add_argument("--eval", nargs="*", default=[])
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    ap.add_argument("--augments", nargs="+", default=["none", "style"])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--weights-to-score", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    ap.add_argument("--pools", nargs="+", default=["avg"], choices=POOLS,
                    help="pooling of the last feature map (avg: the default's gap layer)")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    names = sorted(p.name for p in (Path(args.split) / "train").iterdir() if p.is_dir())
    rows, lines = [], [f"photo levers on {args.split} (head = softmax regression on frozen features):"]
    for size in args.sizes:
        feat = featurizer(size, args.weights, args.pools)
        train = decode_folder(Path(args.split) / "train", size, names)
        evals = {"val": decode_folder(Path(args.split) / "val", size, names),
                 **{e: decode_folder(e, size, names) for e in args.eval}}
        for policy in args.augments:
            t0 = _cpu()
            for r in score_setting(feat, train, evals, policy, args.copies, args.weights_to_score, args.seed):
                rows.append({"size": size, "augment": policy, **r, "cpu_s": round(_cpu() - t0, 1)})
                lines.append(f"  {size} px {policy:6s} {r['pool']:6s} {r['eval']}: memory {r['memory']:.2f}  "
                             f"{r['accuracy']:.4f} / TTA {r['accuracy_tta']:.4f}")
                print(lines[-1], file=sys.stderr, flush=True)
    C.emit("photo_levers", lines, {"split": args.split, "eval": args.eval, "copies": args.copies, "pools": args.pools,
                                   "command": "python bench/photo_levers.py " + " ".join(sys.argv[1:]),
                                   "results": rows})


if __name__ == "__main__":
    main()
