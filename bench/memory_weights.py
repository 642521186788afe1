#!/usr/bin/env python3
"""The nearest-neighbour memory's weight (imgclf/memory.py, `imgclf train --memory W`) on the emoji domain
shift: the head alone (W = 0), the vote of the stored training images alone (W = 1), and blends between.

    python bench/memory_weights.py SPLIT --proxy PROXY --target DIR [--seeds 42 7 1] \\
        [--weights-to-score 0 0.25 0.5 0.75 1] -- [imgclf train options, e.g. --weights FILE]

SPLIT, PROXY and DIR as in bench/emoji_shift.py (google train/val split, the style proxy made from google's
val images, twitter). For each seed a child process runs `imgclf train SPLIT --seed S ...` as a user would
(the model then holds its memory), loads the saved model.keras and takes apart its two answers: the head's
probabilities (layer "probabilities") and the memory's vote (layer "memory"). Each weight W is scored as
(1 - W) * head + W * vote, exactly the model `--memory W` saves (the head is trained the same whatever W:
the memory is added after training), on val, on the proxy (mean of its changes), on the target, and on the
target's images split by whether the same emoji's google drawing was among the training images ("seen":
a training image of the same file name; emoji_folders.py names each file by its emoji in both trees).
One training per seed, so the weights are compared on the same run. Choose W on val and the proxy; the
target is reported.

Prints one line per seed and weight on stderr, then a table of means and one JSON line on stdout.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CHANGES = ("flat", "recolor", "blur")
ROW = "memory-row"


def child(args) -> None:
    """Train one seed in this process, then score each weight of the saved model's two answers."""
    work = Path(args.workdir) / f"memory-{args.seed}"
    shutil.rmtree(work, ignore_errors=True)
    train_cpu = C.imgclf_in_process(["train", args.data, "--registry", str(work / "reg"), "--name", "m", "--seed",
                                     str(args.seed), "--format", "json", "-q", *args.train_args])

    import keras
    import numpy as np

    from imgclf.data.pipeline import decode
    from imgclf.data.scan import scan
    from imgclf.memory import MEMORY_LAYER, load_keras_model
    from imgclf.preprocessing import PreprocessingSpec

    folder = work / "reg" / "m" / "1"
    meta = json.loads((folder / "metadata.json").read_text())
    if "memory" not in meta:
        sys.exit("the trained model has no memory: leave --memory at its default or give it above 0")
    spec, names = PreprocessingSpec.from_dict(meta["preprocessing"]), meta["class_names"]
    model = load_keras_model(folder / "model.keras")
    both = keras.Model(model.input, [model.get_layer("probabilities").output, model.get_layer(MEMORY_LAYER).output])
    trained_on = {os.path.basename(p) for p in scan(Path(args.data) / "train", class_names=names).paths}

    def answers(root: Path):  # as `imgclf evaluate` reads a folder: the model's class order, its preprocessing
        ds = scan(root, class_names=names)
        d = decode(ds.paths, ds.labels, spec)
        outs = [both(np.asarray(d.pixels[i:i + 64], dtype=np.float32), training=False)
                for i in range(0, len(d.labels), 64)]
        head, vote = (np.concatenate([np.asarray(o[k]) for o in outs]) for k in (0, 1))
        seen = np.array([os.path.basename(p) in trained_on for p in d.paths])
        return head, vote, d.labels, seen

    sets = {"val": Path(args.data) / "val", **{c: Path(args.proxy) / c for c in CHANGES}, "target": Path(args.target)}
    data = {k: answers(v) for k, v in sets.items()}
    for w in args.weights_to_score:
        acc = {}
        for k, (head, vote, y, seen) in data.items():
            right = ((1 - w) * head + w * vote).argmax(1) == y
            acc[k] = float(right.mean())
            if k == "target":
                acc["target_seen"], acc["target_unseen"] = (float(right[m].mean()) if m.any() else None
                                                            for m in (seen, ~seen))
        acc["proxy"] = sum(acc[c] for c in CHANGES) / len(CHANGES)
        print(ROW, json.dumps({"seed": args.seed, "weight": w, **acc, "train_cpu_s": round(train_cpu, 1),
                               "memory": meta["memory"]}), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def parent(args) -> None:
    rows = []
    for seed in args.seeds:
        cmd = [sys.executable, __file__, args.data, "--proxy", args.proxy, "--target", args.target,
               "--workdir", args.workdir, "--weights-to-score", *map(str, args.weights_to_score),
               "--child-seed", str(seed), "--", *args.train_args]
        for r in C.child_rows(cmd, ROW, f"seed {seed}"):  # (the train command prints its own JSON too)
            rows.append(r)
            print(f"  seed {seed} weight {r['weight']:.2f}: val {r['val']:.4f} proxy {r['proxy']:.4f} "
                  f"target {r['target']:.4f} (seen {r['target_seen']}, unseen {r['target_unseen']})",
                  file=sys.stderr, flush=True)
    lines = [f"memory weights, trained on {args.data} ({' '.join(args.train_args)}), seeds {args.seeds}; means:",
             f"  {'weight':>6s} {'val':>7s} {'proxy':>7s} {'target':>7s} {'seen':>7s} {'unseen':>7s}"]
    means = []
    for w in args.weights_to_score:
        sel = [r for r in rows if r["weight"] == w]
        m = {k: (sum(r[k] for r in sel) / len(sel) if all(r[k] is not None for r in sel) else float("nan"))
             for k in ("val", "proxy", "target", "target_seen", "target_unseen")}
        means.append({"weight": w, **m})
        lines.append(f"  {w:6.2f} {m['val']:7.4f} {m['proxy']:7.4f} {m['target']:7.4f} {m['target_seen']:7.4f} "
                     f"{m['target_unseen']:7.4f}")
    C.emit("memory_weights", lines, {"data": args.data, "proxy": args.proxy, "target": args.target,
                                     "train_args": args.train_args, "means": means, "results": rows})


def main() -> None:
    ap = C.emoji_seed_parser(__doc__)
    ap.add_argument("--weights-to-score", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    C.run_per_seed(ap, child, parent)


if __name__ == "__main__":
    main()
