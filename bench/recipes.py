#!/usr/bin/env python3
"""A/B of `imgclf train` recipes on one data set: test accuracy, CPU seconds, interleaved rounds.

    python bench/recipes.py DATA [--eval DIR] [--rounds 1] [--seeds 42] [--baseline TREE] \\
        --recipe 'NAME=ARGS' --recipe 'NAME2=ARGS2' ...

Each recipe is `imgclf train DATA ARGS` in a new child process (CPU seconds = user + sys of that
child, all threads, from wait4). The figure is the test accuracy `imgclf train` reports (DATA's test/),
or, with --eval DIR, `imgclf evaluate MODEL DIR`'s accuracy (e.g. train on emoji/google, evaluate on
emoji/twitter: a domain shift). A recipe whose NAME starts with `base:` runs the imgclf of --baseline TREE
(a git worktree of the old code, put first on PYTHONPATH), so old and new code run side by side.
Runs are interleaved: round 1 runs every recipe once (per seed), then round 2, ...

Examples (docs/benchmarks.md, "Better models by default"):
    python bench/make_photos.py /tmp/photos && imgclf split /tmp/photos /tmp/photos_split --val 0.15 --test 0.15
    python bench/recipes.py /tmp/photos_split --baseline /tmp/base \\
        --recipe 'base:cnn=--arch cnn' --recipe 'cnn=--arch cnn'
    python bench/recipes.py /tmp/emoji/google --eval /tmp/emoji/twitter \\
        --recipe 'auto=--weights /tmp/mnv2.weights.h5' --recipe 'cnn=--arch cnn'
Prints one line per run on stderr, then a table and one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--eval", default=None, help="evaluate each model on this folder (else DATA's test/)")
    ap.add_argument("--recipe", action="append", required=True, help="NAME=ARGS (imgclf train options)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--baseline", default=None, help="worktree of the old imgclf, for recipes named base:...")
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()
    recipes = []
    for r in args.recipe:
        name, _, rest = r.partition("=")
        if name.startswith("base:") and not args.baseline:
            sys.exit(f"recipe {name}: needs --baseline TREE")
        recipes.append((name, shlex.split(rest)))
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for rnd in range(args.rounds):
            for seed in args.seeds:
                for name, extra in recipes:
                    env = C.child_env()
                    if name.startswith("base:"):
                        env["PYTHONPATH"] = os.path.abspath(args.baseline) + os.pathsep + env.get("PYTHONPATH", "")
                    reg = Path(tmp) / f"reg-{len(results)}"
                    cmd = C.imgclf_cmd("train", args.data, "--registry", str(reg), "--name", "m", "--seed",
                                       str(seed), "--format", "json", *extra)
                    res = C.run_child(cmd, env=env)
                    m = json.loads(res.stdout)["metrics"]
                    acc = m.get("test_accuracy")
                    ev_cpu = 0.0
                    if args.eval:
                        ev = C.run_child(C.imgclf_cmd("evaluate", "m", args.eval, "--registry", str(reg),
                                                      "--format", "json", "-q"), env=env)
                        acc, ev_cpu = json.loads(ev.stdout)["accuracy"], ev.cpu
                    chose = [l for l in res.stderr.splitlines() if "--arch auto chose" in l]
                    row = {"recipe": name, "round": rnd + 1, "seed": seed, "accuracy": acc,
                           "val_accuracy": m.get("val_accuracy"),
                           "last_epoch_train_accuracy": m.get("last_epoch_train_accuracy"),
                           "epochs_run": m.get("epochs_run"), "train_cpu_s": round(res.cpu, 1),
                           "train_wall_s": round(res.wall, 1), "eval_cpu_s": round(ev_cpu, 1),
                           "chose": chose[0].strip() if chose else None,
                           "command": "imgclf " + " ".join(cmd[1:])}
                    results.append(row)
                    print(f"  round {rnd + 1} seed {seed} {name}: accuracy {acc:.4f} (val {m.get('val_accuracy')}, "
                          f"train {m.get('last_epoch_train_accuracy')}, {m.get('epochs_run')} epochs, "
                          f"{res.cpu:.0f} cpu-s)", file=sys.stderr, flush=True)
    lines = [f"recipes on {args.data}" + (f", evaluated on {args.eval}" if args.eval else ", test/ accuracy"),
             f"  {'recipe':28s} {'accuracy (each run)':34s} {'median':>7s} {'train cpu-s':>11s}"]
    for name, _ in recipes:
        rows = [r for r in results if r["recipe"] == name]
        accs = [r["accuracy"] for r in rows]
        lines.append(f"  {name:28s} {' '.join(f'{a:.4f}' for a in accs):34s} {C.median(accs):7.4f} "
                     f"{C.median([r['train_cpu_s'] for r in rows]):11.0f}")
    C.emit("recipes", lines, {"data": args.data, "eval": args.eval, "results": results})


if __name__ == "__main__":
    main()
