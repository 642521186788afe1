#!/usr/bin/env python3
"""Score one trained photo model's two answers, each way of blending them, on folders: the head alone
(memory weight 0), the nearest-neighbour vote alone (1) and blends between, each without and with test-time
augmentation (the image and its left-right mirror averaged, what `--tta` does).

    python bench/photo_score.py MODEL_DIR FOLDER [FOLDER ...] [--weights-to-score 0 0.25 0.5 0.75 1]

MODEL_DIR is a registry version folder (REG/NAME/1) of a model trained with a memory (`imgclf train` with
the pretrained defaults). Each FOLDER is read as `imgclf evaluate` reads it (the model's class order and
preprocessing). Weight W scores (1 - W) * head + W * vote: exactly the model `--memory W` saves (the head
trains the same whatever W; the memory is added after training), so all weights compare on one training
run. Use it on a validation / development folder to choose; a held-out folder only to report.

Prints one line per folder, weight and TTA setting, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def answers(model_dir: Path, folders):
    """{folder: (head, vote, head of the mirror, vote of the mirror, labels)}"""
    import keras
    import numpy as np

    from imgclf.data.pipeline import decode
    from imgclf.data.scan import scan
    from imgclf.memory import MEMORY_LAYER, load_keras_model
    from imgclf.preprocessing import PreprocessingSpec

    meta = json.loads((model_dir / "metadata.json").read_text())
    if "memory" not in meta:
        sys.exit(f"{model_dir}: the model has no memory (train it with --memory above 0)")
    spec, names = PreprocessingSpec.from_dict(meta["preprocessing"]), meta["class_names"]
    model = load_keras_model(model_dir / "model.keras")
    both = keras.Model(model.input, [model.get_layer("probabilities").output, model.get_layer(MEMORY_LAYER).output])

    def run(pixels):
        outs = [both(np.asarray(pixels[i:i + 64], dtype=np.float32), training=False)
                for i in range(0, len(pixels), 64)]
        return [np.concatenate([np.asarray(o[k]) for o in outs]) for k in (0, 1)]

    out = {}
    for folder in folders:
        ds = scan(Path(folder), class_names=names)
        d = decode(ds.paths, ds.labels, spec)
        pixels = np.asarray(d.pixels)
        out[folder] = (*run(pixels), *run(pixels[:, :, ::-1]), np.asarray(d.labels), list(d.paths))
    return out, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--weights-to-score", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data, meta = answers(Path(args.model_dir), args.folders)
    rows, lines = [], [f"model {args.model_dir} (memory {meta['memory'].get('weight')}, "
                       f"{meta['memory'].get('images')} images); accuracy by memory weight, TTA off / on:"]
    for folder, (head, vote, fhead, fvote, y, _) in data.items():
        for w in args.weights_to_score:
            plain = float((((1 - w) * head + w * vote).argmax(1) == y).mean())
            tta = float((((1 - w) * (head + fhead) + w * (vote + fvote)).argmax(1) == y).mean())
            rows.append({"folder": folder, "weight": w, "accuracy": plain, "accuracy_tta": tta, "images": len(y)})
            lines.append(f"  {folder}: W {w:.2f}  {plain:.4f} / {tta:.4f}  ({len(y)} images)")
    C.emit("photo_score", lines, {"model": args.model_dir, "memory": meta["memory"], "results": rows})


if __name__ == "__main__":
    main()
