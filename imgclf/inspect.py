"""`imgclf scan`: what is in a dataset and what is wrong with it (nothing is changed)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from imgclf.data.scan import find_duplicates, find_split_dirs, scan
from imgclf.errors import DataError


def inspect_dataset(data, duplicates: bool = True) -> dict:
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
        "splits": {k: {"images": len(ds.samples), "per_class": ds.counts()} for k, ds in scanned.items()},
        "sizes": sizes.most_common(),
        "modes": sorted(modes.items()),
        "problems": problems,
        "empty_classes": sorted({c for ds in scanned.values() for c in ds.empty_classes}),
        "usable": usable,
        "verdict": verdict,
    }
