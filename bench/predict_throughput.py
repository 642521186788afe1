#!/usr/bin/env python3
"""`imgclf predict FOLDER --format jsonl` (and `imgclf predict -` fed paths on stdin) vs a bare onnxruntime loop.

    python bench/predict_throughput.py [--quick] [--images N] [--arch cnn|mobilenet_v2 ...]
                                       [--model M --registry R] [--rounds R] [--batch-size B]

imgclf:  a new process that reads N image files, decodes them, runs the ONNX model, writes N JSON lines.
limit:   a new process with a bare onnxruntime loop (the same batch size) over float32 arrays of the same
         N images, decoded beforehand and loaded from one .npy file; run twice, with the default session
         options and with intra-op spinning off (as imgclf runs it), and the better of the two counts.
Both are whole processes (start-up, import, session creation included); the limit's loop alone is
reported too. Runs are interleaved (limit, folder, stdin, then again); medians over rounds, in wall
seconds and CPU seconds. Target: imgclf's throughput within 15% of the limit's.

Streaming: (1) paths fed one by one, with a pause, from a thread: the first output line must come
before the last path is written; (2) one path written and stdin left open: its result must come
without more input (interactive use: `tail -f list | imgclf predict -`).

Without --model it trains and exports small models itself (1 epoch on 300 images per class) in a
temporary registry: cnn at 28x28x1 (a decode-bound case: the model costs less than reading the files)
and mobilenet_v2 --weights none at 96x96 (a model-bound case). Prints human lines, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ARCH_ARGS = {"cnn": [], "mobilenet_v2": ["--arch", "mobilenet_v2", "--weights", "none", "--image-size", "96"]}


def _bare_child(args) -> None:
    """The limit: onnxruntime over pre-decoded float32 arrays, batch by batch. Prints one JSON line."""
    clock = time.perf_counter(), time.process_time()
    import numpy as np
    import onnxruntime as ort

    x = np.load(args.pixels)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if args.no_spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    t0, c0 = time.perf_counter(), time.process_time()
    checksum = 0
    for i in range(0, len(x), args.batch_size):
        probs = session.run(None, {name: x[i:i + args.batch_size]})[0]
        checksum += int(probs.argmax(axis=1).sum())
    print(json.dumps({"loop_wall": time.perf_counter() - t0, "loop_cpu": time.process_time() - c0,
                      "startup_wall": t0 - clock[0], "startup_cpu": c0 - clock[1], "checksum": checksum}))


def _timed_predict(cmd, stdin_data=None):
    """Run `imgclf predict`, recording when each output line arrives. Returns (ChildResult, first, last)."""
    arrivals = []
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=C.child_env())
    err = []
    t_err = threading.Thread(target=lambda: err.append(p.stderr.read()))
    t_err.start()
    if stdin_data is not None:
        def feed():
            p.stdin.write(stdin_data)
            p.stdin.close()
        threading.Thread(target=feed, daemon=True).start()
    lines = 0
    for line in p.stdout:
        lines += 1
        if lines == 1:
            arrivals.append(time.perf_counter() - t0)
    arrivals.append(time.perf_counter() - t0)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    t_err.join()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}: {err[0][-2000:].decode(errors='replace')}")
    return C.ChildResult(rc, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, "", ""), \
        lines, arrivals[0], arrivals[-1]


def _streaming(model_args, paths, n_slow: int, pause: float, wait_limit: float) -> dict:
    """(1) slow feed: first line before the last path is written; (2) one path, stdin open: a result."""
    out = {}
    cmd = C.imgclf_cmd("predict", "-", "--format", "jsonl", *model_args)
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env=C.child_env(), bufsize=0)
    t0 = time.perf_counter()
    times = {}

    def feed():
        for k, path in enumerate(paths[:n_slow]):
            p.stdin.write((path + "\n").encode())
            time.sleep(pause)
        times["last_written"] = time.perf_counter() - t0
        p.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    first = p.stdout.readline()
    times["first_line"] = time.perf_counter() - t0
    rest = p.stdout.read().splitlines()
    p.wait()
    writer.join()
    out["slow_feed"] = {"paths": n_slow, "pause_s": pause, "first_line_s": round(times["first_line"], 3),
                        "last_path_written_s": round(times["last_written"], 3),
                        "lines": 1 + len(rest) if first else 0,
                        "first_line_before_last_read": bool(first) and times["first_line"] < times["last_written"]}

    # (2) interactive: one path, then wait with stdin open
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env=C.child_env(), bufsize=0)
    t0 = time.perf_counter()
    p.stdin.write((paths[0] + "\n").encode())
    got = {}

    def read_one():
        got["line"] = p.stdout.readline()
        got["t"] = time.perf_counter() - t0

    reader = threading.Thread(target=read_one, daemon=True)
    reader.start()
    reader.join(wait_limit)
    answered = "t" in got and bool(got["line"])
    p.stdin.close()
    p.wait()
    out["one_path_stdin_open"] = {"answered": answered, "latency_s": round(got["t"], 3) if answered else None,
                                  "waited_up_to_s": wait_limit}
    return out


def bench_model(label, model_args, onnx_path, spec, paths, work, rounds, batch_size) -> dict:
    import numpy as np

    from imgclf.preprocessing import load_image

    arrays = Path(work) / f"{label}-x.npy"
    np.save(arrays, np.stack([load_image(p, spec) for p in paths]).astype(np.float32))
    folder_cmd = C.imgclf_cmd("predict", str(Path(paths[0]).parent.parent), "--format", "jsonl",
                              "--batch-size", str(batch_size), *model_args)
    stdin_cmd = C.imgclf_cmd("predict", "-", "--format", "jsonl", "--batch-size", str(batch_size), *model_args)
    stdin_data = ("\n".join(paths) + "\n").encode()
    bare_cmd = [sys.executable, __file__, "--child-bare", "--onnx", str(onnx_path), "--pixels", str(arrays),
                "--batch-size", str(batch_size)]
    runs = {"limit": [], "limit_nospin": [], "folder": [], "stdin": []}
    for r in range(rounds):
        for name, extra in (("limit", []), ("limit_nospin", ["--no-spin"])):
            res = C.run_child(bare_cmd + extra)
            rec = res.json_line()
            rec.update(wall=res.wall, cpu=res.cpu, maxrss_mib=res.maxrss_mib)
            runs[name].append(rec)
        for name, cmd, data in (("folder", folder_cmd, None), ("stdin", stdin_cmd, stdin_data)):
            res, lines, first, last = _timed_predict(cmd, data)
            if lines != len(paths):
                raise RuntimeError(f"{name}: {lines} lines for {len(paths)} images")
            runs[name].append({"wall": res.wall, "cpu": res.cpu, "maxrss_mib": res.maxrss_mib,
                               "first_line_s": first, "stream_s": last - first})
        print(f"  {label} round {r + 1}: limit {runs['limit'][-1]['wall']:.2f}s/{runs['limit'][-1]['cpu']:.2f}cpu "
              f"(loop {runs['limit'][-1]['loop_wall']:.2f}s)  limit-nospin {runs['limit_nospin'][-1]['wall']:.2f}s/"
              f"{runs['limit_nospin'][-1]['cpu']:.2f}cpu  folder {runs['folder'][-1]['wall']:.2f}s/"
              f"{runs['folder'][-1]['cpu']:.2f}cpu  stdin {runs['stdin'][-1]['wall']:.2f}s/"
              f"{runs['stdin'][-1]['cpu']:.2f}cpu", file=sys.stderr)
    n = len(paths)
    fig = {k: {"wall": C.median([x["wall"] for x in v]), "cpu": C.median([x["cpu"] for x in v])}
           for k, v in runs.items()}
    fig["limit_loop"] = {"wall": C.median([x["loop_wall"] for x in runs["limit"]]),
                         "cpu": C.median([x["loop_cpu"] for x in runs["limit"]])}
    ratios = {}
    for name in ("folder", "stdin"):
        for key in ("wall", "cpu"):
            # per round: each imgclf run against the limit runs of the same round; the limit is the
            # better of the two bare loops (default session options, or spinning off as imgclf has it)
            ratios[f"{name}_{key}"] = C.median([C.ratio(a[key], min(b[key], c[key])) for a, b, c in
                                                zip(runs[name], runs["limit"], runs["limit_nospin"])])
            ratios[f"{name}_{key}_vs_default_loop"] = C.median(
                [C.ratio(a[key], b[key]) for a, b in zip(runs[name], runs["limit"])])
    return {"images": n, "shape": list(spec.shape), "batch_size": batch_size,
            "images_per_s": {k: round(n / v["wall"], 1) for k, v in fig.items()},
            "figures": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in fig.items()},
            "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "target_within_15pct": {k: v <= 1.15 for k, v in ratios.items() if k in ("folder_wall", "stdin_wall")},
            "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 images, 1 round, cnn only")
    ap.add_argument("--images", type=int, default=None, help="how many test images (default 5000)")
    ap.add_argument("--arch", nargs="+", choices=sorted(ARCH_ARGS), default=None,
                    help="models to train when no --model is given (default: cnn mobilenet_v2)")
    ap.add_argument("--model", help="an exported model (NAME, NAME:VERSION or path) instead of training")
    ap.add_argument("--registry", help="registry of --model")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--batch-size", type=int, default=32, help="imgclf predict's default: 32")
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    ap.add_argument("--child-bare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    ap.add_argument("--pixels", help=argparse.SUPPRESS)
    ap.add_argument("--no-spin", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_bare:
        return _bare_child(args)

    n = args.images or (1000 if args.quick else 5000)
    rounds = args.rounds or (1 if args.quick else 3)
    archs = args.arch or (["cnn"] if args.quick else ["cnn", "mobilenet_v2"])
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    test = C.make_dataset_folder(args.source, "test", work / "data" / f"fmnist-test-{n // 10}pc", n // 10)
    from imgclf.data.scan import scan
    from imgclf.registry import resolve
    from imgclf.preprocessing import PreprocessingSpec

    paths = scan(test).paths
    results, lines = {}, []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        if args.model:
            models = [("given", args.model, args.registry)]
        else:
            train = C.make_dataset_folder(args.source, "train", work / "data" / "fmnist-png-28-300pc", 300)
            models = [(a, C.train_and_export(Path(tmp) / "registry", train, f"bench-{a.replace('_', '-')}",
                                             *ARCH_ARGS[a]), str(Path(tmp) / "registry")) for a in archs]
        for label, model, registry in models:
            ref = resolve(registry, model)
            spec = PreprocessingSpec.from_dict(ref.metadata["preprocessing"])
            model_args = ["--model", model] + (["--registry", registry] if registry else [])
            rec = bench_model(label, model_args, ref.onnx_path, spec, paths, tmp, rounds, args.batch_size)
            rec["streaming"] = _streaming(model_args, paths, n_slow=40, pause=0.25, wait_limit=30.0)
            results[label] = rec
            ips, r, f = rec["images_per_s"], rec["ratios"], rec["figures"]
            s = rec["streaming"]
            lines += [
                f"predict_throughput [{label}: {ref.metadata.get('arch', '?')} {'x'.join(map(str, spec.shape))}]: "
                f"{n} images, batch {args.batch_size}, {rounds} round(s), interleaved, whole processes",
                f"  limit (bare onnxruntime, pre-decoded)  {f['limit']['wall']:.2f}s  {ips['limit']:.0f} img/s  "
                f"{f['limit']['cpu']:.2f} cpu-s   (its loop alone {f['limit_loop']['wall']:.2f}s)",
                f"  limit, spinning off                   {f['limit_nospin']['wall']:.2f}s  "
                f"{ips['limit_nospin']:.0f} img/s  {f['limit_nospin']['cpu']:.2f} cpu-s   (ratios below: vs the "
                "better limit of each round)",
                f"  imgclf predict FOLDER                 {f['folder']['wall']:.2f}s  {ips['folder']:.0f} img/s  "
                f"{f['folder']['cpu']:.2f} cpu-s   ratio {r['folder_wall']:.3f} wall, {r['folder_cpu']:.3f} cpu  "
                f"(target <= 1.15: {'met' if r['folder_wall'] <= 1.15 else 'MISSED'})",
                f"  imgclf predict - (stdin)              {f['stdin']['wall']:.2f}s  {ips['stdin']:.0f} img/s  "
                f"{f['stdin']['cpu']:.2f} cpu-s   ratio {r['stdin_wall']:.3f} wall, {r['stdin_cpu']:.3f} cpu  "
                f"(target <= 1.15: {'met' if r['stdin_wall'] <= 1.15 else 'MISSED'})",
                f"  streaming: slow feed ({s['slow_feed']['paths']} paths, {s['slow_feed']['pause_s']}s apart): "
                f"first line at {s['slow_feed']['first_line_s']:.2f}s, last path written at "
                f"{s['slow_feed']['last_path_written_s']:.2f}s -> "
                f"{'met' if s['slow_feed']['first_line_before_last_read'] else 'MISSED'}; one path with stdin "
                f"open: {'answered in %.2fs' % s['one_path_stdin_open']['latency_s'] if s['one_path_stdin_open']['answered'] else 'NO answer within %ss' % s['one_path_stdin_open']['waited_up_to_s']}",
            ]
    C.emit("predict_throughput", lines, {"images": n, "rounds": rounds, "models": results})


if __name__ == "__main__":
    main()
