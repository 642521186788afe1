#!/usr/bin/env python3
"""A cold `imgclf predict photo.jpg` (a new process, warm disk cache): ONNX backend vs `--backend keras`,
and a cold `imgclf --help`.

    python bench/predict_cold.py [--quick] [--model M --registry R] [--rounds R] [--image FILE]

Without --model it first trains (1 epoch, 300 images per class of Fashion-MNIST) and exports a small
cnn into a temporary registry. The image is a 640x480 colour JPEG made from a Fashion-MNIST test image
(decoded and resized to the model's input like any photo), unless --image is given.

Every command runs once unmeasured (to warm the disk cache), then the commands are interleaved for
R rounds: onnx, keras, --help, and `python -c pass` (the cost of starting any Python process here, the
floor under all three). Medians of wall seconds, CPU seconds (user+sys) and peak RSS of each child.
Targets: onnx under 1 s, keras/onnx at least 5x, --help under 0.5 s. Also checks that the ONNX path
never imports TensorFlow. Prints human lines, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CHECK_NO_TF = ("import sys\n"
               "sys.argv = ['imgclf'] + sys.argv[1:]\n"
               "from imgclf.cli import main\n"
               "try:\n    main()\nexcept SystemExit:\n    pass\n"
               "print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)\n")


def make_photo(source: str, dest: Path) -> Path:
    if dest.exists():
        return dest
    from PIL import Image

    test = C.source_split(source, "test")
    cls = sorted(p for p in test.iterdir() if p.is_dir())[0]
    src = sorted(cls.iterdir())[0]
    im = Image.open(src).convert("L").resize((640, 480), Image.Resampling.BILINEAR)
    Image.merge("RGB", [im, im.point(lambda v: int(v * 0.8)), im.point(lambda v: int(v * 0.6))]).save(
        dest, quality=90)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds")
    ap.add_argument("--model", help="an exported model (NAME, NAME:VERSION or path) instead of training one")
    ap.add_argument("--registry", help="registry of --model")
    ap.add_argument("--image", help="the image to classify (default: a 640x480 JPEG made from Fashion-MNIST)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    ap.add_argument("--source", default=C.DEFAULT_SOURCE)
    ap.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    image = Path(args.image) if args.image else make_photo(args.source, work / "photo.jpg")

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        if args.model:
            model, registry = args.model, args.registry
        else:
            train = C.make_dataset_folder(args.source, "train", work / "data" / "fmnist-png-28-300pc", 300)
            registry = str(Path(tmp) / "registry")
            model = C.train_and_export(Path(registry), train, "bench-cold")
        margs = ["--model", model] + (["--registry", registry] if registry else [])
        commands = {
            "onnx": C.imgclf_cmd("predict", str(image), "--format", "jsonl", *margs),
            "keras": C.imgclf_cmd("predict", str(image), "--format", "jsonl", "--backend", "keras", *margs),
            "help": C.imgclf_cmd("--help"),
            "python": [sys.executable, "-c", "pass"],
        }
        env = C.child_env()
        outputs = {}
        for name, cmd in commands.items():  # warm the disk cache; keep the answers to compare
            outputs[name] = C.run_child(cmd, env=env).stdout
        labels = {k: json.loads(outputs[k].splitlines()[0])["label"] for k in ("onnx", "keras")}
        if labels["onnx"] != labels["keras"]:
            print(f"warning: onnx and keras labels differ: {labels}", file=sys.stderr)
        no_tf = C.run_child([sys.executable, "-c", CHECK_NO_TF, "predict", str(image), "--format", "jsonl",
                             *margs], env=env)
        tf_imported = "tensorflow imported: True" in no_tf.stderr
        runs = {name: [] for name in commands}
        for r in range(rounds):
            for name, cmd in commands.items():
                res = C.run_child(cmd, env=env)
                runs[name].append({"wall": res.wall, "cpu": res.cpu, "maxrss_mib": res.maxrss_mib})
            print(f"  round {r + 1}: " + "  ".join(f"{k} {v[-1]['wall']:.2f}s/{v[-1]['cpu']:.2f}cpu"
                                                  for k, v in runs.items()), file=sys.stderr)

    fig = {name: {k: C.median([x[k] for x in v]) for k in ("wall", "cpu", "maxrss_mib")} for name, v in runs.items()}
    speedup = {k: C.median([C.ratio(ke[k], on[k]) for ke, on in zip(runs["keras"], runs["onnx"])])
               for k in ("wall", "cpu")}
    targets = {"onnx_under_1s": fig["onnx"]["wall"] < 1.0, "keras_over_onnx_at_least_5x": speedup["wall"] >= 5.0,
               "help_under_0.5s": fig["help"]["wall"] < 0.5, "onnx_path_without_tensorflow": not tf_imported}
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    lines = [
        f"predict_cold: one image ({image.name}), new process each time, warm disk cache, {rounds} round(s), "
        "interleaved (medians)",
        f"  imgclf predict (onnx)           {fig['onnx']['wall']:.3f}s  {fig['onnx']['cpu']:.3f} cpu-s  "
        f"{fig['onnx']['maxrss_mib']:.0f} MiB   (target < 1 s: {ok(targets['onnx_under_1s'])}; TensorFlow "
        f"imported: {'yes' if tf_imported else 'no'})",
        f"  imgclf predict --backend keras  {fig['keras']['wall']:.3f}s  {fig['keras']['cpu']:.3f} cpu-s  "
        f"{fig['keras']['maxrss_mib']:.0f} MiB",
        f"  keras/onnx                      {speedup['wall']:.1f}x wall, {speedup['cpu']:.1f}x cpu   "
        f"(target >= 5x: {ok(targets['keras_over_onnx_at_least_5x'])})",
        f"  imgclf --help                   {fig['help']['wall']:.3f}s  {fig['help']['cpu']:.3f} cpu-s  "
        f"(target < 0.5 s: {ok(targets['help_under_0.5s'])})",
        f"  python -c pass (floor)          {fig['python']['wall']:.3f}s  {fig['python']['cpu']:.3f} cpu-s",
    ]
    C.emit("predict_cold", lines, {"image": str(image), "rounds": rounds, "figures": fig,
                                   "ratios": {"keras_over_onnx": speedup}, "targets_met": targets,
                                   "tensorflow_imported_by_onnx_path": tf_imported, "runs": runs})


if __name__ == "__main__":
    main()
