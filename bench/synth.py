"""Does `imgclf synth` help a scarce class? Against the cheaper answers: class weights, offline augmentation.

Fashion-MNIST, two classes cut to --scarce-n training images (the others --per-class), the default cnn
trained on the same real images five ways, per seed:

  a  nothing                         (the real images as they are)
  b  --class-weight auto
  c  offline augmentation            (`imgclf augment --target-per-class`: scarce classes topped up)
  d  synthetic images                (`imgclf synth --target-per-class`: the same count, from a GAN trained
                                      on this seed's training images)
  e  half of each                    (c's augmentation to the midpoint, then the generator of d tops up)

Reported: test recall of each scarce class and test accuracy, mean over seeds (and each seed in the JSON
line). Nothing is chosen on the test set: training stops early on val/ (real images only), every setting is
fixed before the run. Also a Frechet distance (FID-style) between real held-out images of each scarce class
and (i) other real held-out images (the reference: what "as close as real" means at this n), (ii) the
synthetic images, (iii) augmented copies, on the penultimate features of model a of the same seed.

    python3 ../shared/data/fashion_mnist_folders.py /tmp/synth/fmnist --per-class 1400 --test-per-class 100
    nice -n 10 python bench/synth.py --source /tmp/synth/fmnist --workdir /tmp/synth/bench

Runs in one process (TensorFlow imported once); CPU seconds of each stage are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import imgclf_in_process, machine  # noqa: E402

CONDITIONS = {"a": "nothing", "b": "class weight auto", "c": "offline augmentation", "d": "synthetic (GAN)",
              "e": "augmentation + synthetic"}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def files_of(folder: Path) -> List[Path]:
    return sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name))


def link_tree(dest: Path, sources: List[Path]) -> None:
    """dest/<class>/ with symlinks to every file of sources/<class>/ (names prefixed by source number)."""
    for k, src in enumerate(sources):
        for cls_dir in sorted(p for p in src.iterdir() if p.is_dir()):
            (dest / cls_dir.name).mkdir(parents=True, exist_ok=True)
            for f in cls_dir.iterdir():
                # synth_<n> names kept (scan and split recognise them); real names are digits, no clash
                name = f.name if k == 0 or f.name.startswith("synth_") else f"s{k}_{f.name}"
                os.symlink(f.resolve(), dest / cls_dir.name / name)


def make_data(source: Path, work: Path, per_class: int, scarce: List[str], scarce_n: int, val_n: int,
              held_n: int) -> Dict[str, Path]:
    """train/ (scarce classes cut), val/ (real, val_n each), test/ (the source's test split), and for each
    scarce class two disjoint real held-out sets of held_n (the Frechet reference)."""
    root = work / "data"
    done = root / ".complete"
    paths = {"train": root / "base" / "train", "val": root / "base" / "val", "test": root / "test",
             "heldA": root / "heldA", "heldB": root / "heldB"}
    if done.exists():
        return paths
    shutil.rmtree(root, ignore_errors=True)
    for cls_dir in sorted(p for p in (source / "train").iterdir() if p.is_dir()):
        files = files_of(cls_dir)
        n = scarce_n if cls_dir.name in scarce else per_class
        parts = {"train": files[:n], "val": files[per_class:per_class + val_n]}
        if cls_dir.name in scarce:
            off = per_class + val_n
            parts["heldA"] = files[off:off + held_n]
            parts["heldB"] = files[off + held_n:off + 2 * held_n]
            if len(parts["heldB"]) < held_n:
                sys.exit(f"{cls_dir}: too few images; make the source with --per-class {off + 2 * held_n}")
        for part, fs in parts.items():
            (paths[part] / cls_dir.name).mkdir(parents=True, exist_ok=True)
            for f in fs:
                shutil.copy(f, paths[part] / cls_dir.name / f.name)
    shutil.copytree(source / "test", paths["test"])
    done.write_text("ok")
    return paths


def train_root(work: Path, name: str, train_sources: List[Path], val: Path) -> Path:
    root = work / "roots" / name
    shutil.rmtree(root, ignore_errors=True)
    link_tree(root / "train", train_sources)
    os.symlink(val.resolve(), root / "val")
    return root


def run_imgclf(argv: List[str]) -> float:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return imgclf_in_process(argv)


def evaluate(registry: Path, name: str, test: Path, out: Path, scarce: List[str]) -> dict:
    from imgclf import registry as reg
    from imgclf.evaluate import evaluate as run_eval

    rep = run_eval(reg.resolve(registry, name), test, out=out, force=True, html=False)
    recall = {r["class"]: r["recall"] for r in rep["per_class"]}
    return {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"], **{f"recall_{c}": recall[c] for c in scarce}}


def features(model_dir: Path, files: List[Path]):
    """Penultimate-layer features (the input of the classifier's last Dense layer) of imgclf model a."""
    import numpy as np
    from imgclf import registry as reg
    from imgclf.preprocessing import load_image
    from imgclf.tf_quiet import import_keras

    keras = import_keras()
    ref = reg.ModelRef(model_dir, reg.read_json(model_dir / reg.METADATA))
    model = keras.models.load_model(ref.keras_path, compile=False)
    head = keras.Model(model.inputs, model.layers[-1].input)
    spec = ref.spec
    x = np.stack([load_image(str(f), spec) for f in files])
    return np.asarray(head([x.astype("float32")], training=False), dtype=np.float64)


def frechet(a, b) -> float:
    import numpy as np
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="/tmp/synth/fmnist")
    ap.add_argument("--workdir", default="/tmp/synth/bench")
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--scarce", default="shirt,sandal")
    ap.add_argument("--scarce-n", type=int, default=30)
    ap.add_argument("--val-n", type=int, default=30)
    ap.add_argument("--held-n", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=8, help="cnn epochs (early stopping on val may stop sooner)")
    ap.add_argument("--gan-epochs", type=int, default=8, help="imgclf synth --epochs")
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    scarce = args.scarce.split(",")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(Path(args.source), work, args.per_class, scarce, args.scarce_n, args.val_n, args.held_n)
    registry = work / "registry"
    target, half = args.per_class, (args.per_class + args.scarce_n) // 2
    print(f"machine {json.dumps(machine())}")
    print(f"train: {args.per_class} images per class, {', '.join(scarce)}: {args.scarce_n}; val {args.val_n} "
          f"per class; test {data['test']}; seeds {args.seeds}; cnn epochs {args.epochs}, GAN epochs "
          f"{args.gan_epochs}", flush=True)
    rows: Dict[str, List[dict]] = {k: [] for k in CONDITIONS}
    fids: List[dict] = []
    stage_cpu: Dict[str, float] = {}

    def timed(stage: str, argv: List[str]) -> None:
        t = cpu()
        run_imgclf(argv)
        stage_cpu[stage] = stage_cpu.get(stage, 0.0) + cpu() - t
        print(f"  {stage}: {cpu() - t:.0f} CPU-s", flush=True)

    for seed in args.seeds:
        s = str(seed)
        gen = work / f"seed{s}"
        shutil.rmtree(gen, ignore_errors=True)
        common = ["--registry", str(registry), "--seed", s, "-q"]
        base = train_root(work, f"a{s}", [data["train"]], data["val"])
        # the generated training images of c, d and e (scarce classes only), all from the real train/ only
        timed("augment", ["augment", str(data["train"]), str(gen / "aug"), "--target-per-class", str(target),
                          "--seed", s, "-q"])
        timed("synth (GAN training)", ["synth", str(base), str(gen / "synth"), "--classes", args.scarce,
                                       "--target-per-class", str(target), "--epochs", str(args.gan_epochs),
                                       "--name", f"gan{s}"] + common)
        timed("augment", ["augment", str(data["train"]), str(gen / "aug_half"), "--target-per-class", str(half),
                          "--seed", s, "-q"])
        timed("synth --from", ["synth", "--from", f"gan{s}", str(gen / "synth_half"), "--classes", args.scarce,
                               "--per-class", str(target - half), "--seed", str(seed + 1000), "--registry",
                               str(registry), "-q"])
        roots = {"a": base, "b": base,
                 "c": train_root(work, f"c{s}", [gen / "aug"], data["val"]),
                 "d": train_root(work, f"d{s}", [data["train"], gen / "synth"], data["val"]),
                 "e": train_root(work, f"e{s}", [gen / "aug_half", gen / "synth_half"], data["val"])}
        for k, root in roots.items():
            extra = ["--class-weight", "auto"] if k == "b" else []
            name = f"{k}{s}"
            timed(f"train {k}", ["train", str(root), "--arch", "cnn", "--epochs", str(args.epochs), "--name", name]
                  + extra + common)
            r = evaluate(registry, name, data["test"], work / "eval" / name, scarce) | {"seed": seed}
            rows[k].append(r)
            print(f"seed {seed} {k} ({CONDITIONS[k]}): " + ", ".join(f"{m} {v:.3f}" for m, v in r.items()
                                                                      if m != "seed"), flush=True)
        from imgclf import registry as reg
        model_a = reg.resolve(registry, f"a{s}").path
        for c in scarce:
            held_a, held_b = files_of(data["heldA"] / c), files_of(data["heldB"] / c)
            synth_files = [f for f in files_of(gen / "synth" / c)][:args.held_n]
            aug_files = [f for f in files_of(gen / "aug" / c) if not (data["train"] / c / f.name).exists()]
            fa = features(model_a, held_a)
            fid = {"seed": seed, "class": c, "n": args.held_n,
                   "real_vs_real": frechet(fa, features(model_a, held_b)),
                   "real_vs_synthetic": frechet(fa, features(model_a, synth_files)),
                   "real_vs_augmented": frechet(fa, features(model_a, aug_files[:args.held_n])),
                   "real_vs_train30": frechet(fa, features(model_a, files_of(data["train"] / c)))}
            fids.append(fid)
            print(f"seed {seed} Frechet distance {c}: " + ", ".join(f"{k} {v:.1f}" for k, v in fid.items()
                                                                if k.startswith("real")), flush=True)

    print("\nmean over seeds " + " ".join(map(str, args.seeds)) + " (test set; nothing chosen on it)")
    metrics = ["accuracy"] + [f"recall_{c}" for c in scarce]
    print(f"| condition | {' | '.join(metrics)} |\n|---|" + "---|" * len(metrics))
    summary = {}
    for k, label in CONDITIONS.items():
        means = {m: statistics.mean(r[m] for r in rows[k]) for m in metrics}
        spread = {m: (min(r[m] for r in rows[k]), max(r[m] for r in rows[k])) for m in metrics}
        summary[k] = {"label": label, "mean": means, "min_max": spread}
        print(f"| {k} {label} | " + " | ".join(f"{means[m]:.3f} ({spread[m][0]:.2f}-{spread[m][1]:.2f})"
                                               for m in metrics) + " |")
    print("\nFrechet distance to real held-out images (penultimate features of model a), mean over seeds")
    for c in scarce:
        f = [x for x in fids if x["class"] == c]
        print(f"  {c}: " + ", ".join(f"{k} {statistics.mean(x[k] for x in f):.1f}" for k in f[0]
                                     if k.startswith("real")))
    print("CPU seconds by stage: " + ", ".join(f"{k} {v:.0f}" for k, v in stage_cpu.items()))
    print(json.dumps({"bench": "synth", "args": vars(args), "rows": rows, "summary": summary, "frechet": fids,
                      "cpu_seconds": stage_cpu}))


if __name__ == "__main__":
    main()
