#!/usr/bin/env python3
"""Transfer with a domain shift: choose `imgclf train` recipes on the source domain only, report the target.

    python bench/emoji_shift.py proxy SPLIT/val PROXY          # once: the style proxy, from source images only
    python bench/emoji_shift.py run SPLIT --proxy PROXY --target DIR [--seeds 42] \\
        --recipe 'NAME=ARGS' --recipe 'NAME2=ARGS2' ...

SPLIT is a split root of the source domain (train/ + val/, e.g. `imgclf split emoji/google SPLIT --val 0.1
--test 0`). Every recipe is `imgclf train SPLIT ARGS` in a child process (CPU seconds = user + sys of
that child, all threads, from wait4), then `imgclf evaluate` of the model on three things:

- val: SPLIT/val, the held-out source images (in-domain accuracy);
- proxy: PROXY/<change>/, the same val images under fixed changes of drawing style made with Pillow from
  the source images alone (`proxy` below); the figure is the mean accuracy over the changes. This, not the
  target, is the criterion a recipe is chosen by;
- target: DIR (emoji/twitter), the other domain: the test, reported, never chosen on.

The style changes (fixed, no randomness; each keeps the class and changes the look the way another vendor's
drawing would):
  flat     median filter 5 px + 16 levels per channel (0 and 255 kept): gradients and shading flattened to plain fills
  recolor  saturation x0.6, brightness x1.1, hue turned by 1/24 of the wheel: another palette
  blur     Gaussian blur radius 1.2 px (at 64 px): softer, thinner detail, other line weights

Prints one line per run on stderr, then a table and one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CHANGES = ("flat", "recolor", "blur")


def _style(img, change: str):
    """One fixed style change of an RGB Pillow image."""
    from PIL import ImageEnhance, ImageFilter

    if change == "flat":
        # 16 levels per channel that keep 0 and 255 (ImageOps.posterize would turn the white background gray)
        return img.filter(ImageFilter.MedianFilter(5)).point(lambda v: round(v * 15 / 255) * 17)
    if change == "recolor":
        import numpy as np
        from PIL import Image

        img = ImageEnhance.Brightness(ImageEnhance.Color(img).enhance(0.6)).enhance(1.1)
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + 256 // 24) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    if change == "blur":
        return img.filter(ImageFilter.GaussianBlur(1.2))
    raise ValueError(change)


def make_proxy(src: Path, dest: Path) -> None:
    """DEST/<change>/<class>/<file>.png for every image of the class-folder tree SRC. Decoded by imgclf's
    own decoder (transparency on its background), so the proxy differs from SRC only by the change."""
    from PIL import Image

    from imgclf.preprocessing import load_full

    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        sys.exit(f"{src}: no .png files")
    for change in CHANGES:
        for f in files:
            out = dest / change / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            _style(Image.fromarray(load_full(f, 3), "RGB"), change).save(out)
    print(f"wrote {len(files)} images x {len(CHANGES)} changes ({', '.join(CHANGES)}) to {dest}", file=sys.stderr)


def _evaluate(reg: Path, data: Path, out: Path, env) -> tuple:
    ev = C.run_child(C.imgclf_cmd("evaluate", "m", str(data), "--registry", str(reg), "--out", str(out),
                                  "--no-html", "--format", "json", "-q"), env=env)
    return json.loads(ev.stdout)["accuracy"], ev.cpu


def run(args) -> None:
    recipes = [(name, shlex.split(rest)) for name, _, rest in (r.partition("=") for r in args.recipe)]
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for seed in args.seeds:
            for name, extra in recipes:
                env = C.child_env()
                reg = Path(tmp) / f"reg-{len(results)}"
                cmd = C.imgclf_cmd("train", args.data, "--registry", str(reg), "--name", "m", "--seed", str(seed),
                                   "--format", "json", "-q", *extra)
                res = C.run_child(cmd, env=env)
                m = json.loads(res.stdout)["metrics"]
                val, _ = _evaluate(reg, Path(args.data) / "val", reg / "ev-val", env)
                proxy = {c: _evaluate(reg, Path(args.proxy) / c, reg / f"ev-{c}", env)[0] for c in CHANGES}
                target, ev_cpu = _evaluate(reg, Path(args.target), reg / "ev-target", env)
                row = {"recipe": name, "seed": seed, "val": val, "proxy": sum(proxy.values()) / len(proxy),
                       "proxy_by_change": proxy, "target": target, "epochs_run": m.get("epochs_run"),
                       "train_cpu_s": round(res.cpu, 1), "train_wall_s": round(res.wall, 1),
                       "target_eval_cpu_s": round(ev_cpu, 1), "command": "imgclf " + " ".join(cmd[1:])}
                results.append(row)
                print(f"  seed {seed} {name}: val {val:.4f} proxy {row['proxy']:.4f} "
                      f"({' '.join(f'{c} {a:.3f}' for c, a in proxy.items())}) target {target:.4f} "
                      f"({res.cpu:.0f} cpu-s)", file=sys.stderr, flush=True)
    lines = [f"recipes trained on {args.data}; proxy {args.proxy}; target {args.target}",
             f"  {'recipe':24s} {'val':>7s} {'proxy':>7s} {'target':>7s} {'train cpu-s':>11s}"]
    for name, _ in recipes:
        rows = [r for r in results if r["recipe"] == name]
        lines.append(f"  {name:24s} {C.median([r['val'] for r in rows]):7.4f} "
                     f"{C.median([r['proxy'] for r in rows]):7.4f} {C.median([r['target'] for r in rows]):7.4f} "
                     f"{C.median([r['train_cpu_s'] for r in rows]):11.0f}")
    C.emit("emoji_shift", lines, {"data": args.data, "proxy": args.proxy, "target": args.target, "results": results})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("proxy", help="make the style proxy of a class-folder tree")
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    r = sub.add_parser("run", help="train and evaluate recipes")
    r.add_argument("data")
    r.add_argument("--proxy", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--recipe", action="append", required=True, help="NAME=ARGS (imgclf train options)")
    r.add_argument("--seeds", type=int, nargs="+", default=[42])
    r.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()
    if args.cmd == "proxy":
        make_proxy(args.src, args.dest)
    else:
        run(args)


if __name__ == "__main__":
    main()
