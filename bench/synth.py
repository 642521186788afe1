#!/usr/bin/env python3
"""Does `imgclf synth` help scarce classes? Fashion-MNIST with two classes cut to 30 training images.

    python3 /work/shared/data/fashion_mnist_folders.py /tmp/synth/fm --per-class 650 --test-per-class 300
    nice -n 10 python bench/synth.py /tmp/synth/fm /tmp/synth/bench --seeds 1 2 --epochs 6 --gan-epochs 40

From FM/train/<class>/ (the first 650 images of each class, in file order): train = the first 300 (30 for
the scarce classes), val = the next 50, "held-out real" = the next 300 (only for the Frechet distance);
test = FM/test (300 per class), used for the reported figures only: nothing is chosen on it.
Arms, the default cnn (`imgclf train --arch cnn`, same epochs and seed in every arm):
  a  nothing            b  --class-weight auto
  c  offline augmentation (`imgclf augment --target-per-class 300`: the scarce classes topped up to 300)
  d  synthetic images (`imgclf synth --classes ...`: the same 270 extra images per scarce class)
  e  half of c + half of d (135 augmented + 135 synthetic per scarce class)
Frechet distance (FD) per scarce class on the 128 features of the `head_dense` layer of arm a's model:
synthetic vs held-out real half A, augmented (arm c's new images) vs A, and held-out real half B vs A
(the reference: what two samples of real images of the same size score), 150 images each.
Prints a table per arm (mean and per seed) and writes RESULTS.json to OUT.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCARCE = ["shirt", "ankle_boot"]
N_TRAIN, N_SCARCE, N_VAL, N_HELD = 300, 30, 50, 300
ARMS = ["a_none", "b_class_weight", "c_augment", "d_synth", "e_augment+synth"]


def run(*args, cwd=None) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "imgclf", *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=cwd)
    if r.returncode != 0:
        raise SystemExit(f"imgclf {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def link_tree(files_by_class: dict, dest: Path) -> None:
    for cls, files in files_by_class.items():
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            os.symlink(f.resolve(), dest / cls / f.name)


def make_pools(fm: Path, work: Path) -> dict:
    """train / val / held-out real pools (symlinks into FM/train), in file order."""
    pools = {"train": {}, "val": {}, "held": {}}
    for d in sorted(p for p in (fm / "train").iterdir() if p.is_dir()):
        files = sorted(d.iterdir(), key=lambda p: int(p.stem))
        n = N_SCARCE if d.name in SCARCE else N_TRAIN
        pools["train"][d.name] = files[:n]
        pools["val"][d.name] = files[N_TRAIN:N_TRAIN + N_VAL]
        pools["held"][d.name] = files[N_TRAIN + N_VAL:N_TRAIN + N_VAL + N_HELD]
        assert len(pools["held"][d.name]) == N_HELD, f"{d}: need {N_TRAIN + N_VAL + N_HELD} images"
    if not (work / "base").exists():
        link_tree(pools["train"], work / "base" / "train")
        link_tree(pools["val"], work / "base" / "val")
        os.symlink((fm / "test").resolve(), work / "base" / "test")
    return pools


def split_root(work: Path, arm: str, train_tree: Path) -> Path:
    """A split root whose train/ is `train_tree` and val/, test/ are the shared real ones."""
    root = work / "roots" / arm
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    os.symlink(train_tree.resolve(), root / "train")
    os.symlink((work / "base" / "val").resolve(), root / "val")
    os.symlink((work / "base" / "test").resolve(), root / "test")
    return root


def make_trees(work: Path, seed: int, gan_epochs) -> dict:
    """The training tree of each arm (real + augmented / synthetic), and the seed's generator stats."""
    base = work / "base" / "train"
    s = work / f"seed{seed}"
    trees = {"a_none": base, "b_class_weight": base}
    aug = s / "aug"
    if not aug.exists():
        run("augment", base, aug, "--target-per-class", N_TRAIN, "--seed", seed, "-q")
    trees["c_augment"] = aug
    syn = s / "synth"
    t0 = children_cpu()
    if not syn.exists():
        run("synth", base, syn, "--classes", ",".join(SCARCE), "--seed", seed, "--registry", work / "reg",
            "--name", f"gan-seed{seed}", "-q", *(["--epochs", gan_epochs] if gan_epochs else []))
    gan_cpu = children_cpu() - t0
    d = s / "d_train"
    if not d.exists():
        shutil.copytree(base, d, symlinks=True)
        for cls in SCARCE:
            for f in sorted((syn / cls).glob("synth_*.png")):
                os.symlink(f.resolve(), d / cls / f.name)
    trees["d_synth"] = d
    e = s / "e_train"
    if not e.exists():
        half = N_SCARCE + (N_TRAIN - N_SCARCE) // 2
        run("augment", base, e, "--target-per-class", half, "--seed", seed, "-q")
        for cls in SCARCE:
            extra = sorted((syn / cls).glob("synth_*.png"), key=lambda p: int(p.stem.split("_")[1]))
            for f in extra[:N_TRAIN - half]:
                os.symlink(f.resolve(), e / cls / f.name)
    trees["e_augment+synth"] = e
    return {"trees": trees, "gan_cpu_s": gan_cpu, "synth": syn, "aug": aug}


def train_and_test(work: Path, arm: str, tree: Path, seed: int, epochs: int) -> dict:
    root = split_root(work, f"{arm}-seed{seed}", tree)
    name = f"{arm.split('_')[0]}-seed{seed}"
    extra = ["--class-weight", "auto"] if arm == "b_class_weight" else []
    t0 = children_cpu()
    meta = json.loads(run("train", root, "--arch", "cnn", "--epochs", epochs, "--seed", seed, "--name", name,
                          "--registry", work / "reg", "--format", "json", "-q", *extra))
    train_cpu = children_cpu() - t0
    rep = json.loads(run("evaluate", f"{name}:{meta['version']}", work / "base" / "test", "--no-html",
                         "--registry", work / "reg", "--format", "json", "--force", "-q",
                         "--out", work / "eval" / f"{arm}-seed{seed}"))
    recall = {r["class"]: r["recall"] for r in rep["per_class"]}
    return {"accuracy": rep["accuracy"], "recall": {c: recall[c] for c in SCARCE}, "train_cpu_s": train_cpu,
            "model": meta["path"], "val_accuracy": meta["metrics"].get("val_accuracy")}


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def features(model_dir: str, paths) -> np.ndarray:
    from imgclf import registry as reg
    from imgclf.memory import load_keras_model
    from imgclf.preprocessing import load_image
    from imgclf.tf_quiet import import_keras

    keras = import_keras()
    ref = reg.resolve(None, model_dir)
    model = load_keras_model(ref.keras_path)
    head = keras.Model(model.inputs, model.get_layer("head_dense").output)
    x = np.stack([load_image(p, ref.spec) for p in paths]).astype("float32")
    return np.asarray(head(x, training=False))


def fd_rows(pools: dict, made: dict, model_dir: str) -> dict:
    out = {}
    for cls in SCARCE:
        held = pools["held"][cls]
        a, b = held[:150], held[150:300]
        synth = sorted((made["synth"] / cls).glob("synth_*.png"))[:150]
        aug = sorted(p for p in (made["aug"] / cls).iterdir() if not p.is_symlink() and "aug" in p.name)[:150]
        fa = features(model_dir, a)
        out[cls] = {"synthetic_vs_real": frechet(features(model_dir, synth), fa),
                    "augmented_vs_real": frechet(features(model_dir, aug), fa) if len(aug) >= 20 else None,
                    "real_vs_real": frechet(features(model_dir, b), fa),
                    "real_train30_vs_real": frechet(features(model_dir, pools["train"][cls]), fa)}
    return out


def summarise(results: dict, seeds) -> None:
    print(f"\n{'arm':18} {'accuracy':>9} " + " ".join(f"{'recall ' + c:>18}" for c in SCARCE) + "  per seed (acc)")
    base = np.mean([results[s]["arms"]["a_none"]["accuracy"] for s in seeds])
    for arm in ARMS:
        acc = [results[s]["arms"][arm]["accuracy"] for s in seeds]
        rec = {c: np.mean([results[s]["arms"][arm]["recall"][c] for s in seeds]) for c in SCARCE}
        print(f"{arm:18} {np.mean(acc):9.4f} " + " ".join(f"{rec[c]:18.3f}" for c in SCARCE)
              + f"  {' '.join(f'{a:.4f}' for a in acc)}  (acc - a: {np.mean(acc) - base:+.4f})")
    print("\nFrechet distance on head_dense features of arm a's model (150 vs 150 held-out real; lower = closer)")
    for cls in SCARCE:
        for key in ("synthetic_vs_real", "augmented_vs_real", "real_vs_real", "real_train30_vs_real"):
            vals = [results[s]["fd"][cls][key] for s in seeds if results[s]["fd"][cls][key] is not None]
            print(f"  {cls:12} {key:22} {np.mean(vals):9.2f}  ({' '.join(f'{v:.2f}' for v in vals)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fm", type=Path, help="fashion_mnist_folders.py output (--per-class 650)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=8, help="cnn epochs")
    ap.add_argument("--gan-epochs", type=int, default=None, help="GAN epochs (default: synth's own)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    pools = make_pools(a.fm, a.out)
    results = {}
    for seed in a.seeds:
        t = time.time()
        made = make_trees(a.out, seed, a.gan_epochs)
        arms = {arm: train_and_test(a.out, arm, made["trees"][arm], seed, a.epochs) for arm in ARMS}
        results[seed] = {"arms": arms, "gan_cpu_s": made["gan_cpu_s"],
                         "fd": fd_rows(pools, made, arms["a_none"]["model"])}
        print(f"seed {seed}: {time.time() - t:.0f} s wall, GAN {made['gan_cpu_s']:.0f} CPU-s, training "
              + ", ".join(f"{k} {v['train_cpu_s']:.0f}" for k, v in arms.items()) + " CPU-s", flush=True)
        (a.out / "RESULTS.json").write_text(json.dumps(results, indent=2, default=str))
    summarise(results, a.seeds)


if __name__ == "__main__":
    main()
