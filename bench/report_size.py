#!/usr/bin/env python3
"""How big report.html gets, and what writing it costs, for a 10,000-image evaluation.

    python bench/report_size.py --model NAME --registry R [--source /tmp/fmnist] [--rounds 2] [--quick]

1. `imgclf evaluate MODEL SOURCE/test` (Fashion-MNIST's 10,000 test images, 28x28 PNG) with the report
   (the default) and with `--no-html`, interleaved for R rounds, each in its own process: the size of
   report.html and the extra wall / CPU seconds of writing it (ratio html / no-html).
2. The worst case for thumbnails: photos. `report.build_report` on 10,000 evaluated images whose paths
   cycle over 300 synthetic 640x480 colour JPEGs (smooth gradients plus noise; 30% wrong, 10 classes), in
   this process: the size of the page and the time to build it.
Prints human lines, then one JSON line. --quick: 2,000 images, one round.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def photos(dest: Path, n: int = 300):
    import numpy as np
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    y, x = np.mgrid[0:480, 0:640]
    for k in range(n):
        p = dest / f"photo{k:03d}.jpg"
        if not p.exists():
            base = np.stack([(x * (1 + k % 7) / 3 + k * 5) % 256, (y * (1 + k % 5) / 2 + k * 11) % 256,
                             ((x + y) * (1 + k % 3) / 4) % 256], -1)
            arr = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(p, quality=88)
        files.append(str(p))
    return files


def photo_report(workdir: Path, n: int) -> dict:
    import numpy as np

    from imgclf.report import build_report

    files = photos(workdir / "report-photos")
    rng = np.random.default_rng(1)
    k = 10
    true = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.3, rng.integers(0, k, n), true)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (true, pred), 1)
    paths = [files[i % len(files)] for i in range(n)]
    names = [f"class_{i}" for i in range(k)]
    report = {"model": "photos:1", "data": str(workdir), "backend": "onnx", "images": n, "skipped": 0,
              "accuracy": float(np.trace(cm) / n), "macro_f1": 0.7, "class_names": names,
              "per_class": [{"class": c, "precision": 0.7, "recall": 0.7, "f1": 0.7, "support": n // k}
                            for c in names], "confusion_matrix": cm.tolist(),
              "misclassified": [{"path": paths[i], "true": names[true[i]], "predicted": names[pred[i]],
                                 "confidence": 0.5} for i in np.flatnonzero(true != pred)]}
    t0, c0 = time.perf_counter(), time.process_time()
    text = build_report(report, paths=paths, true=true, pred=pred, confidence=rng.random(n))
    return {"images": n, "mistakes": len(report["misclassified"]), "bytes": len(text.encode("utf-8")),
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    test = C.source_split(args.source, "test")
    n = 2000 if args.quick else 10_000
    rounds = 1 if args.quick else args.rounds
    if args.quick:
        test = C.make_dataset_folder(args.source, "test", workdir / "report-quick", per_class=n // 10)
    runs = {"html": [], "no-html": []}
    out = Path(tempfile.mkdtemp(prefix="imgclf-report-bench-"))
    size = None
    for r in range(rounds):
        for mode in ("html", "no-html"):
            cmd = C.imgclf_cmd("evaluate", args.model, str(test), "--registry", args.registry, "--out",
                               str(out / mode), "--force", "-q", "--format", "json",
                               *(["--no-html"] if mode == "no-html" else []))
            res = C.run_child(cmd)
            runs[mode].append({"wall_s": res.wall, "cpu_s": res.cpu, "maxrss_mib": res.maxrss_mib})
            if mode == "html":
                size = (out / "html" / "report.html").stat().st_size
    import json
    images = json.loads((out / "html" / "metrics.json").read_text())
    med = {m: {k: C.median([x[k] for x in v]) for k in ("wall_s", "cpu_s", "maxrss_mib")} for m, v in runs.items()}
    photo = photo_report(workdir, n)
    lines = [f"evaluate {args.model} on {test} ({images['images']} images, {images['misclassified_count']} "
             f"mistakes): report.html {size / 2**20:.2f} MiB",
             f"  with report: {med['html']['wall_s']:.1f} s wall, {med['html']['cpu_s']:.1f} CPU-s; --no-html: "
             f"{med['no-html']['wall_s']:.1f} s, {med['no-html']['cpu_s']:.1f} CPU-s; ratio (html / no-html) "
             f"wall {C.ratio(med['html']['wall_s'], med['no-html']['wall_s']):.2f}, CPU "
             f"{C.ratio(med['html']['cpu_s'], med['no-html']['cpu_s']):.2f}",
             f"photos (640x480 JPEG, {photo['images']} images, {photo['mistakes']} mistakes): "
             f"{photo['bytes'] / 2**20:.2f} MiB, built in {photo['wall_s']:.1f} s ({photo['cpu_s']:.1f} CPU-s)"]
    C.emit("report_size", lines, {"images": images["images"], "mistakes": images["misclassified_count"],
                                  "report_bytes": size, "median": med, "runs": runs, "photos": photo})


if __name__ == "__main__":
    main()
