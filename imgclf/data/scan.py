"""Find the images of a class-folder tree, check them, and number the classes.

DATA/<class>/**/<image>: every usable image below a class folder (nested subfolders included)
belongs to that class. Classes are numbered in sorted order of their folder names; the names are
stored, in index order, with every model. Problem files are reported with a reason, never edited.
The other commands all use this scan, so they skip the same files for the same reasons.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from imgclf.config import IMAGE_EXTENSIONS, JUNK_NAMES, SYNTH_MARKER, SYNTH_NAME_PREFIX
from imgclf.data.files import file_digest, map_in_order
from imgclf.errors import DataError, ImageError
from imgclf.preprocessing import load_image, open_image, PreprocessingSpec

SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


@dataclass
class Sample:
    path: str
    label: int
    width: int = 0
    height: int = 0
    mode: str = ""
    synthetic: bool = False  # made by `imgclf synth`: its name or its PNG marker (train split only)


@dataclass
class Dataset:
    root: str
    class_names: List[str]
    samples: List[Sample]
    problems: List[ImageError] = field(default_factory=list)
    empty_classes: List[str] = field(default_factory=list)

    def counts(self) -> Dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}

    @property
    def synthetic(self) -> List[Sample]:
        return [s for s in self.samples if s.synthetic]

    @property
    def paths(self) -> List[str]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> List[int]:
        return [s.label for s in self.samples]


def is_junk(name: str) -> bool:
    low = name.lower()
    return low in JUNK_NAMES or name.startswith("._") or name.startswith(".")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not is_junk(name)


def walk_files(folder: str) -> Iterator[str]:
    """Every file below `folder`, sorted, following directory symlinks without looping."""
    seen = set()

    def visit(d: str) -> Iterator[str]:
        try:
            st = os.stat(d)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a directory symlink loop, or the same folder twice
            return
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if e.name.startswith("."):  # hidden files and folders, macOS ._ forks
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                yield from visit(e.path)
            else:
                yield e.path

    yield from visit(folder)


def class_folders(root: Path) -> List[Path]:
    try:
        return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name)
    except OSError as e:
        raise DataError(f"{root}: cannot list folder ({e.strerror or e})") from None


def find_split_dirs(root: Path) -> Optional[Dict[str, Path]]:
    """{'train': ..., 'val': ..., 'test': ...} when `root` is a split root (train/ plus val/ or test/)."""
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if (root / alias).is_dir():
                found[split] = root / alias
                break
    if "train" in found and ("val" in found or "test" in found):
        return found
    return None


def is_synthetic_name(name: str) -> bool:
    """synth_<n>.<ext>: the names `imgclf synth` writes."""
    low = name.lower()
    return low.startswith(SYNTH_NAME_PREFIX) and low[len(SYNTH_NAME_PREFIX):].split(".")[0].isdigit()


def _check_file(path: str) -> Tuple[Optional[Tuple[int, int, str, bool]], Optional[str]]:
    """(width, height, mode, synthetic) from the header, or a reason the file is unusable. Synthetic: named
    synth_<n> or carrying SYNTH_MARKER in a PNG text chunk (Pillow reads those before the pixels)."""
    if os.path.islink(path) and not os.path.exists(path):
        return None, "dangling symlink"
    try:
        im = open_image(path)
    except ImageError as e:
        return None, e.reason
    with im:
        marked = SYNTH_MARKER in im.info
        return (im.size[0], im.size[1], im.mode, marked or is_synthetic_name(os.path.basename(path))), None


def _deep_check(path: str) -> Optional[str]:
    """Decode fully (a header can be fine in a truncated file). None when the file is usable."""
    try:
        load_image(path, PreprocessingSpec(image_size=(1, 1), channels=3))
    except ImageError as e:
        return e.reason
    return None


def scan(root, class_names: Optional[Sequence[str]] = None, deep: bool = False,
         workers: Optional[int] = None, refuse_synthetic: Optional[bool] = None) -> Dataset:
    """Scan a class-folder tree. With `class_names`, labels follow that order (an evaluation set for a
    model) and a class folder the model does not know is an error. `deep` decodes every image fully.
    `refuse_synthetic` (default: when `class_names` is given, i.e. for evaluation sets): a DataError when
    the tree holds images made by `imgclf synth`; they belong in training data only.

    Kept whole (~65 lines): list files -> check them (one batch, threads when slow) -> keep or report each
    -> number the classes is one pass over the same three dicts; pieces would hand all three around."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    folders = class_folders(root)
    if not folders:
        loose = [n for n in os.listdir(root) if is_image_name(n)]
        hint = " (images must sit in one subfolder per class)" if loose else ""
        raise DataError(f"{root}: no class folders found{hint}")
    files_by_class: Dict[str, List[str]] = {}
    problems: List[ImageError] = []
    for folder in folders:
        files = []
        for f in walk_files(str(folder)):
            name = os.path.basename(f)
            if is_junk(name):
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            files.append(f)
        files_by_class[folder.name] = files

    # reading headers waits on the disk more than decoding does: more threads than cores when it is slow
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    all_files = [f for files in files_by_class.values() for f in files]
    checks = dict(zip(all_files, map_in_order(_check_file, all_files, workers)))
    if deep:
        ok = [f for f in all_files if checks[f][0] is not None]
        for f, reason in zip(ok, map_in_order(_deep_check, ok, workers)):
            if reason is not None:
                checks[f] = (None, reason)

    usable: Dict[str, List[Sample]] = {}
    for cls, files in files_by_class.items():
        kept = []
        for f in files:
            info, reason = checks[f]
            if reason is not None:
                problems.append(ImageError(f, reason))
                continue
            kept.append(Sample(f, -1, info[0], info[1], info[2], info[3]))
        usable[cls] = kept

    if refuse_synthetic or (refuse_synthetic is None and class_names is not None):
        _refuse_synthetic(root, usable)
    empty = [c for c, s in usable.items() if not s]
    if class_names is None:
        class_names = [c for c in usable if usable[c]]
    else:
        class_names = list(class_names)
        unknown = [c for c in usable if usable[c] and c not in class_names]
        if unknown:
            raise DataError(f"{root}: class folder(s) {', '.join(unknown)} not among the model's classes "
                            f"({', '.join(class_names)})")
    index = {c: i for i, c in enumerate(class_names)}
    samples = []
    for cls, kept in usable.items():
        if cls in index:
            for s in kept:
                s.label = index[cls]
                samples.append(s)
    return Dataset(str(root), class_names, samples, problems, empty)


def _refuse_synthetic(root: Path, usable: Dict[str, List[Sample]]) -> None:
    found = [s.path for kept in usable.values() for s in kept if s.synthetic]
    if found:
        raise DataError(f"{root}: {len(found)} synthetic image(s) from `imgclf synth` (e.g. {found[0]}); "
                        "validation and test images must be real: move them to the training split")


def require_trainable(ds: Dataset) -> None:
    """A training set needs images of at least two classes."""
    if not ds.samples:
        extra = f" ({len(ds.problems)} unusable files)" if ds.problems else ""
        raise DataError(f"{ds.root}: no usable images found{extra}")
    if len(ds.class_names) < 2:
        raise DataError(f"{ds.root}: only one class ({ds.class_names[0]}); a classifier needs at least two "
                        "class folders")


def find_duplicates(named_samples: Iterable[Tuple[str, str, str]]) -> List[ImageError]:
    """Given (split, class, path) triples, report exact duplicate files (same content): inside one class,
    across classes (label conflict) and across splits (leakage)."""
    by_hash: Dict[str, List[Tuple[str, str, str]]] = defaultdict(list)
    items = list(named_samples)
    for item, digest in zip(items, map_in_order(lambda t: file_digest(t[2]), items, 4)):
        by_hash[digest].append(item)
    problems = []
    for group in by_hash.values():
        if len(group) < 2:
            continue
        first = group[0]
        for split, cls, path in group[1:]:
            if cls != first[1]:
                reason = f"label conflict: same content as {first[2]} (class {first[1]})"
            elif split != first[0]:
                reason = f"leakage: same content as {first[2]} ({first[0]} split)"
            else:
                reason = f"duplicate of {first[2]}"
            problems.append(ImageError(path, reason))
    return problems


def dataset_report(data, duplicates: bool = True) -> dict:
    """`imgclf scan`: classes and counts of each split, image sizes and modes, every problem file with its
    reason (decoded fully; exact duplicates, label conflicts and leakage across splits), and a verdict."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    dirs = find_split_dirs(root)
    parts = dict(dirs) if dirs else {".": root}
    scanned = {}
    class_names = None
    for split_name, folder in parts.items():
        ds = scan(folder, deep=True)
        scanned[split_name] = ds
        if class_names is None:
            class_names = ds.class_names
    problems = [{"path": p.path, "reason": p.reason} for ds in scanned.values() for p in ds.problems]
    problems += [{"path": s.path, "reason": f"synthetic image (imgclf synth) in the {split_name} split: "
                  "evaluation needs real images; move it to train/"}
                 for split_name, ds in scanned.items() if split_name in ("val", "test") for s in ds.synthetic]
    if duplicates:
        triples = [(split_name, ds.class_names[s.label], s.path)
                   for split_name, ds in scanned.items() for s in ds.samples]
        problems += [{"path": p.path, "reason": p.reason} for p in find_duplicates(triples)]
    sizes = Counter(f"{s.width}x{s.height}" for ds in scanned.values() for s in ds.samples)
    modes = Counter(s.mode for ds in scanned.values() for s in ds.samples)
    train = scanned.get("train", scanned.get("."))
    usable = len(train.samples) > 0 and len(train.class_names) >= 2
    verdict = "ok" if usable else ("no usable images" if not train.samples else "only one class")
    return {
        "data": os.path.abspath(root),
        "split_root": bool(dirs),
        "class_names": train.class_names,
        "splits": {k: {"images": len(ds.samples), "per_class": ds.counts(), "synthetic": len(ds.synthetic),
                       "synthetic_per_class": dict(Counter(ds.class_names[s.label] for s in ds.synthetic))}
                   for k, ds in scanned.items()},
        "sizes": sizes.most_common(),
        "modes": sorted(modes.items()),
        "problems": problems,
        "empty_classes": sorted({c for ds in scanned.values() for c in ds.empty_classes}),
        "usable": usable,
        "verdict": verdict,
    }
