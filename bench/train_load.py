#!/usr/bin/env python3
"""What `imgclf train` does before its first epoch: scan the folder, then decode into the pixel cache
(empty cache: hash + decode + fill; warm cache: hash + read), for this checkout and, with --baseline,
for another checkout of imgclf (e.g. `git worktree add /tmp/old REV`), in interleaved child processes.

    python bench/train_load.py [--per-class N] [--rounds R] [--baseline /path/to/other/checkout]

Prints per-run lines, the medians (wall and CPU seconds), the ratios this/baseline, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, shutil, sys, tempfile, time
from imgclf.data.scan import scan
from imgclf.data.pipeline import decode
from imgclf.preprocessing import PreprocessingSpec
root, size, channels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = PreprocessingSpec(image_size=(size, size), channels=channels)
cache = tempfile.mkdtemp()
out = {}
try:
    for kind in ("cold", "warm"):
        t, c = time.perf_counter(), time.process_time()
        ds = scan(root)
        t1, c1 = time.perf_counter(), time.process_time()
        d = decode(ds.paths, ds.labels, spec, cache_dir=cache)
        assert d.from_cache == (kind == "warm")
        out[kind] = {"scan_wall": t1 - t, "scan_cpu": c1 - c, "wall": time.perf_counter() - t,
                     "cpu": time.process_time() - c, "images": len(d.paths)}
finally:
    shutil.rmtree(cache, ignore_errors=True)
print(json.dumps(out))
"""


def run(checkout: Path, data: Path, size: int, channels: int) -> dict:
    env = C.child_env(PYTHONPATH=str(checkout))
    r = subprocess.run([sys.executable, "-c", CHILD, str(data), str(size), str(channels)], env=env,
                       capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        raise RuntimeError(f"child failed for {checkout}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=1500, help="Fashion-MNIST PNGs per class (default 1500)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", help="another checkout of imgclf to compare with")
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()

    work = Path(args.workdir)
    data = C.make_dataset_folder(args.source, "train", work / "data" / f"fmnist-png-28-{args.per_class}pc",
                                 args.per_class)
    who = {"this": REPO} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    runs = {k: [] for k in who}
    for r in range(args.rounds):
        for name, checkout in (reversed(who.items()) if r % 2 else who.items()):
            res = run(checkout, data, 28, 1)
            runs[name].append(res)
            print(f"  round {r + 1} {name:8s}: cold {res['cold']['wall']:.2f}s/{res['cold']['cpu']:.2f}cpu "
                  f"(scan {res['cold']['scan_wall']:.2f}s), warm {res['warm']['wall']:.2f}s/"
                  f"{res['warm']['cpu']:.2f}cpu (scan {res['warm']['scan_wall']:.2f}s)", file=sys.stderr)
    med = {name: {kind: {k: round(C.median([x[kind][k] for x in v]), 3) for k in ("wall", "cpu", "scan_wall")}
                  for kind in ("cold", "warm")} for name, v in runs.items()}
    n = runs["this"][0]["cold"]["images"]
    lines = [f"train_load: {n} PNGs 28x28x1, scan + decode into the pixel cache, {args.rounds} round(s), "
             f"child processes"]
    for name in who:
        m = med[name]
        lines.append(f"  {name:8s} empty cache {m['cold']['wall']:.2f}s / {m['cold']['cpu']:.2f} cpu-s "
                     f"(scan {m['cold']['scan_wall']:.2f}s)   warm cache {m['warm']['wall']:.2f}s / "
                     f"{m['warm']['cpu']:.2f} cpu-s (scan {m['warm']['scan_wall']:.2f}s)")
    ratios = {}
    if args.baseline:
        ratios = {f"{kind}_{k}": round(med["this"][kind][k] / med["baseline"][kind][k], 3)
                  for kind in ("cold", "warm") for k in ("wall", "cpu")}
        lines.append("  ratio this/baseline: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    C.emit("train_load", lines, {"images": n, "rounds": args.rounds, "checkouts": {k: str(v) for k, v in who.items()},
                                 "medians": med, "ratios": ratios, "runs": runs})


if __name__ == "__main__":
    main()
