#!/usr/bin/env python3
"""`imgclf train` recipes on a photo-like split, each model evaluated with and without `--tta` on
development and held-out photo folders (issue 34).

    python bench/photo_defaults.py SPLIT --registry REG --weights FILE \\
        --recipe 'NAME=ARGS' [--recipe ...] --eval DEV_DIR [--eval HELD_DIR ...] [--seed 42]

Each recipe is `imgclf train SPLIT --weights FILE --registry REG --name NAME --seed S ARGS` in a child
process (CPU seconds = user + sys of the child, all threads, from wait4; kept in REG/NAME/bench_cpu.json
so that a second call reuses the model instead of training it again: delete REG/NAME to retrain). Each
model is then `imgclf evaluate NAME DIR [--tta]` on every --eval folder. The figures: SPLIT's val and
test accuracy as `imgclf train` reports them, and each folder's accuracy. Choose on val and the
development folders; held-out folders are for reporting only.

Prints one line per run on stderr, then a table and one JSON line (with every command) on stdout.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def train(args, name, extra):
    """(train metrics, CPU-s, command) of one recipe, reusing REG/NAME when it holds a finished run."""
    reg = Path(args.registry)
    cmd = C.imgclf_cmd("train", args.split, "--weights", args.weights, "--registry", str(reg), "--name", name,
                       "--seed", str(args.seed), "--format", "json", "-q", *extra)
    side = reg / name / "bench_cpu.json"
    if side.is_file():
        rec = json.loads(side.read_text())
        return rec["metrics"], rec["cpu_s"], rec["command"]
    res = C.run_child(cmd, env=C.child_env())
    metrics = json.loads(res.stdout)["metrics"]
    command = "imgclf " + " ".join(shlex.quote(c) for c in cmd[1:])
    side.write_text(json.dumps({"metrics": metrics, "cpu_s": round(res.cpu, 1), "command": command}))
    return metrics, round(res.cpu, 1), command


def evaluate(args, name, folder, tta):
    cmd = C.imgclf_cmd("evaluate", name, folder, "--registry", args.registry, "--out",
                       str(Path(args.registry) / name / f"eval-{Path(folder).name}{'-tta' if tta else ''}"),
                       "--force", "--no-html", "--format", "json", "-q", *(["--tta"] if tta else []))
    res = C.run_child(cmd, env=C.child_env())
    return json.loads(res.stdout)["accuracy"], "imgclf " + " ".join(cmd[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("split")
    ap.add_argument("--registry", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--recipe", action="append", required=True, help="NAME=ARGS (imgclf train options)")
    ap.add_argument("--eval", action="append", default=[], help="a folder to evaluate every model on")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    Path(args.registry).mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe in args.recipe:
        name, _, rest = recipe.partition("=")
        metrics, cpu, command = train(args, name, shlex.split(rest))
        row = {"recipe": name, "args": rest, "val": metrics.get("val_accuracy"), "test": metrics.get("test_accuracy"),
               "train_cpu_s": cpu, "commands": [command]}
        for folder in args.eval:
            for tta in (False, True):
                acc, ev_cmd = evaluate(args, name, folder, tta)
                row[f"{Path(folder).name}{' tta' if tta else ''}"] = acc
                row["commands"].append(ev_cmd)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "commands"}), file=sys.stderr, flush=True)
    keys = [k for k in rows[0] if k not in ("recipe", "args", "commands")]
    lines = ["| recipe | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['recipe']} (`{r['args']}`) | " + " | ".join(
            f"{r[k]:.4f}" if isinstance(r[k], float) and k != "train_cpu_s" else str(r[k]) for k in keys) + " |")
    C.emit("photo_defaults", lines, {"split": args.split, "eval": args.eval, "seed": args.seed, "results": rows})


if __name__ == "__main__":
    main()
