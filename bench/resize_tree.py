#!/usr/bin/env python3
"""Copy a class-folder tree with every image resized to S x S (mode kept, alpha included), for sweeping
what happens at other image sizes (e.g. where `--arch auto`'s 64 px line belongs, docs/benchmarks.md).

    python bench/resize_tree.py SRC DEST --size 32

Needs only Pillow. Refuses to write into an existing DEST.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dest")
    ap.add_argument("--size", type=int, required=True)
    args = ap.parse_args()
    src, dest = Path(args.src), Path(args.dest)
    if dest.exists():
        sys.exit(f"{dest}: exists; remove it first")
    n = 0
    for f in sorted(src.rglob("*")):
        if not f.is_file() or f.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        out = dest / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im.resize((args.size, args.size), Image.LANCZOS).save(out)
        n += 1
    print(f"wrote {n} images of {args.size}x{args.size} to {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
