#!/usr/bin/env python3
"""A photo-like two-class data set: what a new user's `./cats-and-dogs` looks like to the defaults.

    python bench/make_photos.py OUT [--per-class 300] [--size 640x480] [--seed 0] [--scale 0.12 0.60]
    python bench/make_photos.py OUT --objects EMOJI/google [--classes 4] [--scale 0.08 0.30]

OUT/disc/*.jpg and OUT/box/*.jpg: one object per photo, a filled disc or a filled square of random
colour and random size (12-60% of the short side) at a random place, on a plain background of another
random colour, with a little sensor noise and a soft shadow edge, saved as JPEG (quality 85-95). About
one photo in five is stored rotated with an EXIF Orientation tag (6 or 8: portrait phone shots), so it
only looks right once the orientation is applied. The classes differ in shape only (colours, sizes and
places are drawn from the same distributions), so a model must look at edges and corners.

--scale MIN MAX sets the object's size range (fraction of the short side; issue 34's "small objects": 0.06
0.25). --objects DIR composites real objects instead of shapes: DIR holds class folders of (RGBA) images,
e.g. an emoji vendor's tree from ../shared/data/emoji_folders.py; each photo pastes one image of its class,
resized to the drawn size, at a random place on a plain background (the first --classes folders in name
order; the images of a class are used in turn, in a shuffled order).

Pillow and NumPy only; no TensorFlow. Prints one line per class on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("box", "disc")
#: EXIF Orientation value -> the transpose that, stored, makes exif_transpose restore the upright photo
STORED_ROTATION = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _colour(rng, avoid=None):
    while True:
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        if avoid is None or sum(abs(a - b) for a, b in zip(c, avoid)) > 150:
            return c


def photo(cls: str, size, rng, scale=(0.12, 0.60), obj: Image.Image = None) -> Image.Image:
    """One upright photo: a shape of class `cls` (box/disc), or the RGBA image `obj` pasted."""
    w, h = size
    bg = _colour(rng)
    fg = _colour(rng, avoid=bg)
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    side = max(4, int(rng.uniform(*scale) * min(w, h)))
    x0 = int(rng.integers(0, w - side))
    y0 = int(rng.integers(0, h - side))
    box = (x0, y0, x0 + side, y0 + side)
    if obj is not None:
        piece = obj.convert("RGBA").resize((side, side), Image.Resampling.LANCZOS)
        im.paste(piece, (x0, y0), piece)
    elif cls == "disc":
        d.ellipse(box, fill=fg)
    else:
        d.rectangle(box, fill=fg)
    im = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
    arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _object_sources(root: str, classes, rng) -> dict:
    """class name -> its object image files (shuffled), the first `classes` folders in name order."""
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir())[:classes]
    if len(folders) < 2:
        sys.exit(f"--objects {root}: needs at least two class folders")
    sources = {}
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            sys.exit(f"--objects {folder}: no .png/.jpg images")
        sources[folder.name] = [files[i] for i in rng.permutation(len(files))]
    return sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--size", default="640x480", help="WxH of the upright photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rotated", type=float, default=0.2, help="fraction stored rotated with an EXIF tag")
    ap.add_argument("--scale", type=float, nargs=2, default=(0.12, 0.60), metavar=("MIN", "MAX"),
                    help="object size range, fraction of the short side")
    ap.add_argument("--objects", default=None, help="class folders of object images to paste instead of shapes")
    ap.add_argument("--classes", type=int, default=None, help="with --objects: use the first N class folders")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    sources = _object_sources(args.objects, args.classes, rng) if args.objects else {c: [None] for c in CLASSES}
    for cls, objs in sources.items():
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        rotated = 0
        for i in range(args.per_class):
            obj = objs[i % len(objs)]
            im = photo(cls, (w, h), rng, tuple(args.scale), None if obj is None else Image.open(obj))
            exif = Image.Exif()
            if rng.random() < args.rotated:
                orientation = int(rng.choice([6, 8]))
                im = im.transpose(STORED_ROTATION[orientation])
                exif[0x0112] = orientation
                rotated += 1
            im.save(folder / f"{cls}_{i:04d}.jpg", "JPEG", quality=int(rng.integers(85, 96)), exif=exif.tobytes())
        print(f"{folder}: {args.per_class} photos {w}x{h}, {rotated} stored rotated with an EXIF tag",
              file=sys.stderr)


if __name__ == "__main__":
    main()
