#!/usr/bin/env python3
"""Peak memory of `imgclf train` on a dataset 3x larger than the in-memory cache budget (the pixels stream
from the memory-mapped on-disk cache) vs the same run with everything in memory.

    python bench/train_memory.py [--quick] [--per-class N] [--size S] [--arch A]

The data set: Fashion-MNIST training images resized to SxS (default 96) colour JPEGs, N per class
(default 1200: 12,000 images, 316 MiB of decoded pixels at 96x96x3). Each run is `imgclf train DATA
--epochs 1 --image-size S --channels 3 --arch A` in a new process. The default arch is mlp: the input
pipeline's memory does not depend on the model, and mlp keeps a run short on 2 cores (use --arch cnn
for the default model):
  memory:  the default budget (IMGCLF_CACHE_MEMORY unset): every split is decoded into RAM;
  stream:  IMGCLF_CACHE_MEMORY = (decoded bytes of the data set) / 3, so the training split streams
           from the cache file.
Each mode runs twice: with an empty cache (decode + cache fill) and with the warm cache.
Memory is read from /proc/PID/status every 20 ms: VmRSS (all resident pages, mapped file pages
included) and RssAnon (the process's own memory: what cannot be dropped under pressure), plus the
kernel's peak (ru_maxrss from wait4). Prints human lines, then one JSON line.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _status_kib(pid: int):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


def measured_run(cmd, env) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            s = _status_kib(p.pid)
            for k in peaks:
                peaks[k] = max(peaks[k], s.get(k, 0))
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = [], []
    t_out = threading.Thread(target=lambda: out.append(p.stdout.read()))
    t_err = threading.Thread(target=lambda: err.append(p.stderr.read()))
    t_out.start()
    t_err.start()
    _, status, usage = os.wait4(p.pid, 0)
    stop.set()
    poller.join()
    t_out.join()
    t_err.join()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n{err[0].decode(errors='replace')[-3000:]}")
    return {"wall": time.perf_counter() - t0, "cpu": usage.ru_utime + usage.ru_stime,
            "maxrss_mib": usage.ru_maxrss / 1024, "peak_rss_mib": peaks["VmRSS"] / 1024,
            "peak_anon_mib": peaks["RssAnon"] / 1024, "peak_file_mib": peaks["RssFile"] / 1024,
            "stderr_tail": err[0].decode(errors="replace")[-400:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 images per class (53 MiB decoded)")
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--size", type=int, default=96, help="image size SxS (colour)")
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()
    per_class = args.per_class or (200 if args.quick else 1200)
    work = Path(args.workdir)
    data = C.make_dataset_folder(args.source, "train", work / "data" / f"fmnist-jpeg-{args.size}-rgb-{per_class}pc",
                                 per_class, fmt="jpeg", size=args.size, rgb=True)
    n = sum(1 for _ in data.glob("*/*.jpg"))
    total_bytes = n * args.size * args.size * 3
    budget = total_bytes // 3
    train_args = ["train", str(data), "--epochs", "1", "--patience", "0", "--image-size", str(args.size),
                  "--channels", "3", "--arch", args.arch, "--batch-size", str(args.batch_size), "-q",
                  "--format", "json", "--name", "mem"]
    runs = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        env_memory = C.child_env()
        env_memory.pop("IMGCLF_CACHE_MEMORY", None)
        env_stream = C.child_env(IMGCLF_CACHE_MEMORY=budget)
        plan = [("memory_cold", env_memory, "reg-memory"), ("stream_cold", env_stream, "reg-stream"),
                ("stream_warm", env_stream, "reg-stream"), ("memory_warm", env_memory, "reg-memory")]
        for name, env, reg in plan:
            runs[name] = measured_run(C.imgclf_cmd(*train_args, "--registry", str(Path(tmp) / reg)), env)
            r = runs[name]
            print(f"  {name}: peak RSS {r['peak_rss_mib']:.0f} MiB (anon {r['peak_anon_mib']:.0f}, file "
                  f"{r['peak_file_mib']:.0f}), ru_maxrss {r['maxrss_mib']:.0f} MiB, {r['wall']:.0f}s", file=sys.stderr)

    def pair(key, phase):
        return runs[f"stream_{phase}"][key], runs[f"memory_{phase}"][key]

    ratios = {f"{phase}_{key}": round(C.ratio(*pair(key, phase)), 3)
              for phase in ("cold", "warm") for key in ("peak_rss_mib", "peak_anon_mib", "maxrss_mib")}
    saved = {phase: round(pair("peak_anon_mib", phase)[1] - pair("peak_anon_mib", phase)[0], 1)
             for phase in ("cold", "warm")}
    lines = [f"train_memory: imgclf train, {n} images {args.size}x{args.size}x3 ({total_bytes / 2**20:.0f} MiB decoded), "
             f"arch {args.arch}, 1 epoch; stream budget IMGCLF_CACHE_MEMORY={budget} ({budget / 2**20:.0f} MiB, 1/3)"]
    for phase in ("cold", "warm"):
        s, m = runs[f"stream_{phase}"], runs[f"memory_{phase}"]
        lines.append(f"  {phase + ' cache':10s} peak RSS  memory {m['peak_rss_mib']:.0f} MiB  stream "
                     f"{s['peak_rss_mib']:.0f} MiB  (ratio {ratios[phase + '_peak_rss_mib']:.3f});  own memory "
                     f"(RssAnon) memory {m['peak_anon_mib']:.0f} MiB  stream {s['peak_anon_mib']:.0f} MiB  (ratio "
                     f"{ratios[phase + '_peak_anon_mib']:.3f}, {saved[phase]:.0f} MiB less)")
    C.emit("train_memory", lines, {"images": n, "shape": [args.size, args.size, 3], "decoded_bytes": total_bytes,
                                   "budget_bytes": budget, "arch": args.arch, "runs": runs, "ratios": ratios,
                                   "anon_mib_saved": saved})


if __name__ == "__main__":
    main()
