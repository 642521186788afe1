#!/usr/bin/env python3
"""Weight-space ensembles of the head-only and the fine-tuned model (WiSE-FT, Wortsman et al. 2022) on the
emoji domain shift: does mixing the weights buy robustness to another drawing style?

    python bench/wise_ft.py SPLIT --proxy PROXY --target DIR [--seeds 42 7 1] [--alphas 0 0.5 0.75 0.9 1]
        -- [imgclf train options, e.g. --weights FILE]

SPLIT, PROXY and DIR as in bench/emoji_shift.py (google train/val split, the style proxy made from google's
val images, twitter). For each seed, a child process runs `imgclf train SPLIT --seed S ...` (in-process, so
the weights at the end of the head phase, which a run otherwise deletes when it commits, are kept), then
sets the model's weights to (1 - alpha) * head + alpha * fine-tuned for each alpha and scores every mix on
val, on the proxy (mean of its changes) and on the target. alpha 1 is the model `imgclf train` saves;
alpha 0 the model after the head phase. The runs train with `--memory 0` (the mixes are of the network's
weights; the nearest-neighbour memory is bench/memory_weights.py's subject). One training per seed, so the alphas are compared on the same run
(paired: no seed noise between them). Choose alpha on val and the proxy; the target is reported.

Prints one line per seed and alpha on stderr, then a table of means and one JSON line on stdout.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CHANGES = ("flat", "recolor", "blur")
ROW = "wise-row"


def _accuracy_sets(args):
    return {"val": Path(args.data) / "val", **{c: Path(args.proxy) / c for c in CHANGES}, "target": Path(args.target)}


def child(args) -> None:
    """Train one seed in this process, then score each mix of the two phases' weights."""
    from imgclf import runs

    work = Path(args.workdir) / f"wise-{args.seed}"
    shutil.rmtree(work, ignore_errors=True)
    head_copy = work / "after-head.weights.h5"
    commit = runs.Run.commit

    def keep_head(self, name, metadata):  # the run deletes its phase weights when it commits
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.phase_weights("head"), head_copy)
        return commit(self, name, metadata)

    runs.Run.commit = keep_head
    train_cpu = C.imgclf_in_process(["train", args.data, "--registry", str(work / "reg"), "--name", "m", "--seed",
                                     str(args.seed), "--format", "json", "-q", "--memory", "0", *args.train_args])

    import keras

    from imgclf.data.pipeline import decode
    from imgclf.data.scan import scan
    from imgclf.preprocessing import PreprocessingSpec

    folder = work / "reg" / "m" / "1"
    meta = json.loads((folder / "metadata.json").read_text())
    spec, names = PreprocessingSpec.from_dict(meta["preprocessing"]), meta["class_names"]
    model = keras.models.load_model(folder / "model.keras", compile=False)
    tuned = [w.copy() for w in model.get_weights()]
    model.load_weights(head_copy)
    head = [w.copy() for w in model.get_weights()]

    def load(root: Path):  # as `imgclf evaluate` reads a folder: the model's class order, its preprocessing
        ds = scan(root, class_names=names)
        d = decode(ds.paths, ds.labels, spec)
        return d.pixels, d.labels

    data = {k: load(v) for k, v in _accuracy_sets(args).items()}
    for a in args.alphas:
        model.set_weights([(1 - a) * h + a * t if h.dtype.kind == "f" else t for h, t in zip(head, tuned)])
        acc = {k: float((model.predict(x, batch_size=64, verbose=0).argmax(1) == y).mean())
               for k, (x, y) in data.items()}
        acc["proxy"] = sum(acc[c] for c in CHANGES) / len(CHANGES)
        print(ROW, json.dumps({"seed": args.seed, "alpha": a, **acc, "train_cpu_s": round(train_cpu, 1)}), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def parent(args) -> None:
    rows = []
    for seed in args.seeds:
        cmd = [sys.executable, __file__, args.data, "--proxy", args.proxy, "--target", args.target,
               "--workdir", args.workdir, "--alphas", *map(str, args.alphas), "--child-seed", str(seed),
               "--", *args.train_args]
        for r in C.child_rows(cmd, ROW, f"seed {seed}"):  # (the train command prints its own JSON too)
            rows.append(r)
            print(f"  seed {seed} alpha {r['alpha']:.2f}: val {r['val']:.4f} proxy {r['proxy']:.4f} "
                  f"target {r['target']:.4f}", file=sys.stderr, flush=True)
    lines = [f"WiSE-FT mixes trained on {args.data} ({' '.join(args.train_args)}), seeds {args.seeds}; means:",
             f"  {'alpha':>5s} {'val':>7s} {'proxy':>7s} {'target':>7s}"]
    means = []
    for a in args.alphas:
        sel = [r for r in rows if r["alpha"] == a]
        m = {k: sum(r[k] for r in sel) / len(sel) for k in ("val", "proxy", "target")}
        means.append({"alpha": a, **m})
        lines.append(f"  {a:5.2f} {m['val']:7.4f} {m['proxy']:7.4f} {m['target']:7.4f}")
    C.emit("wise_ft", lines, {"data": args.data, "proxy": args.proxy, "target": args.target,
                              "train_args": args.train_args, "means": means, "results": rows})


def main() -> None:
    ap = C.emoji_seed_parser(__doc__)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
    C.run_per_seed(ap, child, parent)


if __name__ == "__main__":
    main()
