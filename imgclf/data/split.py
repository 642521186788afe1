"""Split a class-folder tree into DEST/train|val|test/<class>/..., stratified and seeded.

Every usable image lands in exactly one split; SRC is never modified. A manifest
(DEST/split_manifest.csv: source, split, class, dest) records where each image went.
"""
from __future__ import annotations

import csv
import os
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from imgclf.config import DEFAULT_SEED, SPLIT_MODE, SPLIT_MODES, SPLIT_TEST, SPLIT_VAL
from imgclf.data.scan import Dataset, find_split_dirs, require_trainable, scan
from imgclf.errors import DataError, UsageError

MANIFEST = "split_manifest.csv"


@dataclass
class SplitResult:
    dest: str
    counts: Dict[str, Dict[str, int]]     # split -> class -> images
    dataset: Dataset


@dataclass
class Splits:
    """What training reads: paths and labels of each split, with the class names in index order."""

    class_names: List[str]
    train: Dataset
    val: Optional[Dataset]
    test: Optional[Dataset]
    held_out: bool = False       # val was held out of train in memory (the data had no val/)
    problems: list = field(default_factory=list)


def split_counts(n: int, val: float, test: float):
    """(train, val, test) sizes for a class of n images. A class with enough images (3 or more when both
    val and test are asked for) gets at least one val and one test image; train keeps at least one."""
    n_val = round(n * val)
    n_test = round(n * test)
    if val > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    if test > 0 and n_test == 0 and n - n_val >= 2:
        n_test = 1
    while n_val + n_test >= n and (n_val or n_test):  # keep one image for training
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def assign(ds: Dataset, val: float, test: float, seed: int) -> Dict[str, str]:
    """path -> split. Deterministic for a seed: depends only on the sorted paths of each class. Synthetic
    images (imgclf synth) always go to train, and the real images alone are split by the fractions."""
    by_class: Dict[int, List[str]] = {}
    out = {s.path: "train" for s in ds.samples if s.synthetic}
    for s in ds.samples:
        if not s.synthetic:
            by_class.setdefault(s.label, []).append(s.path)
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        rng = random.Random(f"{seed}:{ds.class_names[label]}")
        rng.shuffle(paths)
        n_train, n_val, n_test = split_counts(len(paths), val, test)
        for i, p in enumerate(paths):
            out[p] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return out


def load_splits(data, val_split: float, seed: int) -> Splits:
    """A split root (train/ + val/ and/or test/) or a plain class-folder tree. Without a val/, a
    stratified, seeded `val_split` of the training images is held out in memory (nothing is copied)."""
    root = Path(data)
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    dirs = find_split_dirs(root) if root.is_dir() else None
    train = scan(dirs["train"] if dirs else root)
    require_trainable(train)
    val = scan(dirs["val"], class_names=train.class_names) if dirs and "val" in dirs else None
    test = scan(dirs["test"], class_names=train.class_names) if dirs and "test" in dirs else None
    problems = train.problems + (val.problems if val else []) + (test.problems if test else [])
    held_out = val is None and val_split > 0
    if held_out:
        train, val = hold_out(train, val_split, seed)
    return Splits(train.class_names, train, val, test, held_out, problems)


def hold_out(ds: Dataset, fraction: float, seed: int):
    """(train, val) Datasets: a stratified, seeded `fraction` of each class moved to val."""
    where = assign(ds, fraction, 0.0, seed)
    tr = [s for s in ds.samples if where[s.path] == "train"]
    va = [s for s in ds.samples if where[s.path] == "val"]
    return (Dataset(ds.root, ds.class_names, tr, ds.problems, ds.empty_classes),
            Dataset(ds.root, ds.class_names, va, [], []) if va else None)


def place_file(src: str, dst: Path, mode: str) -> None:
    """Copy, symlink or hardlink `src` to `dst` (parents created)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "copy":
        shutil.copy2(src, dst)
    elif mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    else:
        os.link(os.path.realpath(src), dst)


# split_dataset (~60 lines) is kept whole: its checks, then one staging folder filled and swapped in; the
# try/finally that guarantees "a crash leaves DEST as it was" has to see all of it.
def split_dataset(src, dest, val: float = SPLIT_VAL, test: float = SPLIT_TEST, seed: int = DEFAULT_SEED,
                  mode: str = SPLIT_MODE,
                  force: bool = False, progress: Optional[Callable[[int], None]] = None) -> SplitResult:
    src, dest = Path(src), Path(dest)
    if mode not in SPLIT_MODES:
        raise UsageError(f"--mode must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")
    for name, v in (("val", val), ("test", test)):
        if not 0 <= v < 1:
            raise UsageError(f"--{name} must be between 0 and 1, got {v}")
    if val + test >= 1:
        raise UsageError(f"--val + --test must be below 1, got {val + test}")
    if not src.is_dir():
        raise DataError(f"{src}: folder not found")
    if find_split_dirs(src):
        raise DataError(f"{src}: already a split root (has train/ and val/ or test/); split a class-folder tree")
    src_abs, dest_abs = src.resolve(), dest.resolve()
    if dest_abs == src_abs or src_abs in dest_abs.parents:
        raise UsageError(f"{dest}: DEST must not be inside SRC ({src})")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest}: exists and is not a folder")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise DataError(f"{dest}: folder is not empty (use --force to replace its train/, val/, test/)")

    ds = scan(src, deep=True)  # a truncated file is not a usable image: it goes to no split
    require_trainable(ds)
    where = assign(ds, val, test, seed)

    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".imgclf-split-{uuid.uuid4().hex[:8]}"
    rows = []
    counts = {s: {c: 0 for c in ds.class_names} for s in ("train", "val", "test")}
    try:
        for i, s in enumerate(sorted(ds.samples, key=lambda s: s.path)):
            split = where[s.path]
            cls = ds.class_names[s.label]
            rel = Path(os.path.relpath(s.path, src / cls))
            target = Path(split) / cls / rel
            place_file(s.path, staging / target, mode)
            counts[split][cls] += 1
            rows.append({"source": os.path.relpath(s.path, src), "split": split, "class": cls,
                         "dest": target.as_posix()})
            if progress:
                progress(i + 1)
        with open(staging / MANIFEST, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["source", "split", "class", "dest"])
            w.writeheader()
            w.writerows(rows)
        # Only now replace what was there: a crash above leaves DEST as it was (plus a hidden staging folder).
        for name in ("train", "val", "test", MANIFEST):
            old = dest / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
            if (staging / name).exists():
                os.replace(staging / name, old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SplitResult(str(dest), counts, ds)
