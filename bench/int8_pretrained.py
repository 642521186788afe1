#!/usr/bin/env python3
"""int8 for the pretrained default (issue 34): label agreement and accuracy of the int8 file against the
float one, and its batch-1 speed against fp32 ONNX, on trained mobilenet_v2 models (160 px, with the
nearest-neighbour memory the default adds).

    python bench/int8_pretrained.py sensitivity MODEL_DIR... [--extra DIR...] [--method M]
    python bench/int8_pretrained.py choose MODEL_DIR... [--extra DIR...] [--recipes NAME...] [--seconds S]
    python bench/int8_pretrained.py precision MODEL_DIR... [--extra DIR...]
    python bench/int8_pretrained.py report MODEL_DIR... [--rounds R] [--seconds S]
    python bench/int8_pretrained.py compare MODEL_DIR... --extra DIR... --recipes NAME... [--rounds R] [--seconds S]
    python bench/int8_pretrained.py fallback MODEL_DIR... --extra DIR... [--margins M...] [--margin M] [--recipe NAME]
        [--rounds R]

MODEL_DIR: a registry version folder (REGISTRY/NAME/VERSION) whose training data is still where
metadata.json says.

sensitivity: the stem, each of the 16 blocks and Conv_1 made int8 alone (all else float, the input scaling
  too), then int8 greedily, the least damaging unit first: agreement and mean total variation of the
  probabilities after each step, on the val split (plus --extra).
precision: the default's float set with 8- or 16-bit weights and activations (W8A8 ... W16A16; 16 bits as
  a diagnostic: no fast CPU kernels), on the val split (plus --extra): which half of int8 loses the labels.
--extra: one folder per model of class folders of images the model never saw (not its test split), scored
  together with its val split for a finer agreement figure.
choose: every candidate recipe (RECIPES below) quantizes the model's model.onnx, calibrated on
  `imgclf export`'s default calibration images (300 of the training split, seeded), and is scored on the
  model's **val** split (plus --extra; the test split is never looked at): top-1 agreement with the float
  file (and of the head alone and the memory's vote alone), accuracy of both, and the fp32/int8 CPU per image
  at batch 1 (one short round: a rough figure; the report's is the one to quote).
report: `imgclf export NAME --quantize int8 --force` with the defaults (the recipe chosen), the figures of
  its agreement check on the **test** split, then batch-1 speed: one onnxruntime session per child process
  (CPU provider, default threads) over the test split's images (each at least once), fp32 and int8
  interleaved (A B A B, --rounds), medians and the ratio of each round, in wall time and in CPU seconds per
  image.
compare: each named recipe (e.g. the default scale-stem-bc against scale-stem-bc-gptq) quantized as `imgclf
  export` does (its 300 calibration images), scored on val+ (the recipe is chosen on these) and on the test
  split (reported only), then batch-1 speed, fp32 and int8 interleaved (--rounds), as report.
fallback: the default int8 file (or --recipe's) with a float fallback for close calls (imgclf/fallback.py): top-1 agreement,
  accuracy and the share of images answered in float against the margin, on val+ (the margin is chosen on
  these); then the real fallback file at --margin on val+ and test, and batch-1 speed over the test split's
  images (each image at least once: the fallback's cost depends on the image), fp32, int8 and fallback
  interleaved (--rounds), medians of the ratios to fp32.
Prints human lines, then one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from quantize import _speed  # noqa: E402  (bench/quantize.py: one child process per timed session)

BASE = ("softmax", "memory")
#: MobileNetV2's layers at the input's resolution / 2 (the stem) and its first inverted-residual blocks
STEM = ("Conv1", "bn_Conv1", "expanded_conv")
BLOCKS = tuple(f"block_{i}" for i in range(1, 17))
#: the candidates (imgclf.quantize.Recipe arguments); "issue13" is the recipe every model had before
RECIPES = {
    "issue13": dict(keep_float=BASE),
    "features": dict(keep_float=BASE + ("features",)),
    "features-entropy": dict(keep_float=BASE + ("features",), calibration_method="Entropy"),
    "features-percentile": dict(keep_float=BASE + ("features",), calibration_method="Percentile"),
    "features-first": dict(keep_float=BASE + ("features", "first_conv")),
    "features-adds": dict(keep_float=BASE + ("features", "adds")),
    "features-symmetric": dict(keep_float=BASE + ("features",), symmetric_activations=True),
    "features-depthwise": dict(keep_float=BASE + ("features", "depthwise")),
    "tail1": dict(keep_float=BASE + ("features",), float_tail_convs=1),
    "tail4": dict(keep_float=BASE + ("features",), float_tail_convs=4),
    "tail7": dict(keep_float=BASE + ("features",), float_tail_convs=7),
    "stem": dict(keep_float=BASE + ("features",), float_layers=STEM),
    "stem-block3": dict(keep_float=BASE + ("features",), float_layers=STEM + BLOCKS[:3]),
    "stem-block6": dict(keep_float=BASE + ("features",), float_layers=STEM + BLOCKS[:6]),
    "stem-block3-percentile": dict(keep_float=BASE + ("features",), float_layers=STEM + BLOCKS[:3],
                                   calibration_method="Percentile"),
    "stem-block6-percentile": dict(keep_float=BASE + ("features",), float_layers=STEM + BLOCKS[:6],
                                   calibration_method="Percentile"),
    # the input scaling (x / 127.5 - 1) float too: uint8 cannot hold its 256 half-step values exactly
    "scale": dict(keep_float=BASE + ("features",), float_layers=("scale",)),
    "scale-percentile": dict(keep_float=BASE + ("features",), float_layers=("scale",), calibration_method="Percentile"),
    "scale-entropy": dict(keep_float=BASE + ("features",), float_layers=("scale",), calibration_method="Entropy"),
    "scale-stem": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM),
    "scale-stem-block2": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM + BLOCKS[:2]),
    "scale-stem-adds": dict(keep_float=BASE + ("features", "adds"), float_layers=("scale",) + STEM),
    "scale-stem-depthwise": dict(keep_float=BASE + ("features", "depthwise"), float_layers=("scale",) + STEM),
    "scale-stem-percentile": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM,
                                  calibration_method="Percentile"),
    "scale-stem-entropy": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM,
                               calibration_method="Entropy"),
    "scale-stem-aug": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM),
    "scale-stem-1000": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM),
    # the blocks the sensitivity sweep ranks worst after the stem (bench/int8_pretrained.py sensitivity)
    "scale-stem-b1-2-13-15": dict(keep_float=BASE + ("features",),
                                  float_layers=("scale",) + STEM + ("block_1", "block_2", "block_13", "block_15")),
    # ... and the int8 weights' mean error absorbed by the biases (the default)
    "scale-stem-bc": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM, bias_correction=True),
    # ... and the int8 weights rounded by GPTQ against the quantizer's scales (Recipe.weight_rounding)
    "scale-stem-gptq": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM, weight_rounding="gptq"),
    "scale-stem-bc-gptq": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM, bias_correction=True,
                               weight_rounding="gptq"),
    "scale-bc-gptq": dict(keep_float=BASE + ("features",), float_layers=("scale",), bias_correction=True,
                          weight_rounding="gptq"),
    "scale-stem-block2-bc": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM + BLOCKS[:2],
                                 bias_correction=True),
    # ... and block 13 (the stride-2 block before the last resolution) float: the sweep's worst after the stem on
    # the rebuilt Fashion-MNIST model (alone int8: 95.0% agreement on val, mean TV 0.046, 3-10x any other block)
    "scale-stem-b13-bc": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM + ("block_13",),
                              bias_correction=True),
    "scale-stem-b2-3-13-bc": dict(keep_float=BASE + ("features",),
                                  float_layers=("scale",) + STEM + ("block_2", "block_3", "block_13"),
                                  bias_correction=True),
    "scale-bc": dict(keep_float=BASE + ("features",), float_layers=("scale",), bias_correction=True),
    # ... and the residual streams' channels equalized before calibration (Recipe.equalize, imgclf/equalize.py;
    # the float network unchanged), at strength 1 (full ratio of ranges, capped) and 0.5
    "scale-stem-bc-eq": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM, bias_correction=True,
                             equalize=1.0),
    "scale-stem-bc-eq05": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM, bias_correction=True,
                               equalize=0.5),
    "scale-stem-bc-eq-percentile": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM,
                                        bias_correction=True, equalize=1.0, calibration_method="Percentile"),
    "scale-stem-bc-eq-entropy": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM,
                                     bias_correction=True, equalize=1.0, calibration_method="Entropy"),
    "scale-stem-b13-bc-eq": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM + ("block_13",),
                                 bias_correction=True, equalize=1.0),
    "scale-stem-block6": dict(keep_float=BASE + ("features",), float_layers=("scale",) + STEM + BLOCKS[:6]),
    "features-aug": dict(keep_float=BASE + ("features",)),          # + augmented calibration images
    "features-1000": dict(keep_float=BASE + ("features",)),         # 1,000 calibration images
}


def _augment(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Calibration images as training sees them, roughly: a random horizontal flip, a shift of up to 10%,
    brightness and contrast x0.8-1.2."""
    rng = np.random.default_rng(seed)
    out = pixels.astype(np.float32).copy()
    h, w = out.shape[1:3]
    for i in range(len(out)):
        if rng.random() < 0.5:
            out[i] = out[i, :, ::-1]
        out[i] = np.roll(out[i], (rng.integers(-h // 10, h // 10 + 1), rng.integers(-w // 10, w // 10 + 1)), (0, 1))
        mean = out[i].mean()
        out[i] = (out[i] - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.8, 1.2)
    return np.clip(out, 0, 255)


def _val_images(ref, splits, extra=None):
    """The model's val split, plus the images of `extra` (class folders named as the model's classes, none of
    them seen in training: more images for a finer agreement figure; never the test split)."""
    from imgclf import quantize as Q

    paths, labels = list(splits.val.paths), list(splits.val.labels)
    if extra:
        index = {c: i for i, c in enumerate(ref.metadata["class_names"])}
        found = sorted(Q._image_files(Path(extra))[1])
        paths += found
        labels += [index[Path(f).parent.name] for f in found]
    return Q._decode(paths, labels, ref.spec, splits.val.root + (f" + {extra}" if extra else ""))


#: the two halves of the default's output (memory.py): the head's probabilities and the memory's vote
PARTS = {"head": "probabilities_1/Softmax:0", "memory": "memory_1/truediv_2:0"}


def _part_agreement(float_path: Path, int8_path: Path, pixels: np.ndarray) -> dict:
    """Top-1 agreement of the head alone and of the memory's vote alone (each half of the blend), float file
    against int8 file: where the disagreement comes from."""
    import onnx
    import onnxruntime as ort

    labels = []
    for path in (float_path, int8_path):
        model = onnx.load(str(path))
        names = {t: next((o for n in model.graph.node for o in n.output if o.endswith(t)), None)
                 for t in PARTS.values()}
        if None in names.values():
            return {}
        model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                  for n in names.values())
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = [sess.run(list(names.values()), {sess.get_inputs()[0].name: pixels[i:i + 64].astype(np.float32)})
                for i in range(0, len(pixels), 64)]
        labels.append([np.concatenate([o[k] for o in outs]).argmax(1) for k in range(len(PARTS))])
    return {f"{part}_agreement": float(np.mean(a == b)) for part, a, b in zip(PARTS, *labels)}


def choose(args) -> None:
    from imgclf import quantize as Q
    from imgclf import registry

    lines, record = [], {"models": {}}
    for k, model_dir in enumerate(map(Path, args.models)):
        ref = registry.resolve(model_dir.parent.parent, f"{model_dir.parent.name}:{model_dir.name}")
        splits = Q._model_splits(ref, "--check DIR")
        val = _val_images(ref, splits, args.extra[k] if args.extra else None)
        calib = {n: Q.calibration_images(ref, ref.spec, count=n, splits=splits).pixels for n in (300, 1000)}
        calib["aug"] = _augment(calib[300])
        names = args.recipes or list(RECIPES)
        entry = {}
        work = Path(tempfile.mkdtemp(prefix="int8-choose-"))
        try:
            for name in names:
                pixels = calib[1000] if name.endswith("-1000") else calib["aug"] if name.endswith("-aug") \
                    else calib[300]
                out = work / f"{name}.onnx"
                recipe = Q.Recipe(**RECIPES[name])
                # the same images and method calibrate to the same ranges: computed once
                cache = work / f"{len(pixels)}-{name.endswith('-aug')}-{recipe.calibration_method}-eq{recipe.equalize:g}.ranges"
                try:
                    info = Q.quantize_file(ref.onnx_path, out, pixels, recipe, calibration_cache=cache)
                except Q.QuantizeError as e:
                    lines.append(f"{model_dir} {name:22s} failed: {e}")
                    print(lines[-1], file=sys.stderr, flush=True)
                    continue
                figures, _ = Q.agreement(ref.onnx_path, out, val, ref.metadata["class_names"])
                fp, q8 = _speed(ref.onnx_path, 1, args.seconds), _speed(out, 1, args.seconds)
                parts = _part_agreement(ref.onnx_path, out, val.pixels)
                entry[name] = dict(figures, **parts, float_nodes=info["float_nodes"], calibration_images=len(pixels),
                                   bytes=out.stat().st_size, cpu_saving_b1=fp["cpu_ms_per_image"] / q8["cpu_ms_per_image"],
                                   speedup_b1=q8["images_per_s"] / fp["images_per_s"])
                lines.append(f"{model_dir} {name:22s} val {figures['images']}: agreement "
                             f"{100 * figures['top1_agreement']:6.2f}% ({figures['changed_labels']} changed), fp32 "
                             f"{100 * figures['fp32_accuracy']:.2f}% int8 {100 * figures['int8_accuracy']:.2f}%, "
                             f"max|dp| {figures['max_abs_diff']:.3f}; {info['float_nodes']} nodes float; batch 1 "
                             f"fp32/int8 CPU {entry[name]['cpu_saving_b1']:.2f}x, images/s "
                             f"{entry[name]['speedup_b1']:.2f}x" + "".join(
                                 f"; {k.split('_')[0]} alone {100 * v:.2f}%" for k, v in parts.items()))
                print(lines[-1], file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record["models"][str(model_dir)] = entry
    C.emit("int8_pretrained_choose", lines, record)


#: the units of the sensitivity sweep: the stem, each inverted-residual block, the last 1x1 convolution
UNITS = {"stem": STEM, **{b: (b,) for b in BLOCKS}, "Conv_1": ("Conv_1", "out_relu")}


def _score(float_probs: np.ndarray, int8_path: Path, val) -> dict:
    """Agreement of `int8_path` with the float probabilities on `val`, and the mean total-variation distance
    of the two probability vectors (a finer figure than the agreement on a hundred-odd images)."""
    from imgclf import quantize as Q

    p8 = Q._probabilities(int8_path, val.pixels)
    l32, l8 = float_probs.argmax(1), p8.argmax(1)
    return {"top1_agreement": float(np.mean(l32 == l8)), "changed_labels": int(np.sum(l32 != l8)),
            "int8_accuracy": float(np.mean(l8 == val.labels)), "fp32_accuracy": float(np.mean(l32 == val.labels)),
            "mean_tv": float(0.5 * np.abs(float_probs - p8).sum(1).mean())}


def _try(ref, work: Path, calib: np.ndarray, val, float_probs, name: str, int8_units: Sequence[str],
         method: str = "MinMax", extra_float: Sequence[str] = ("scale",)) -> dict:
    """Quantize `ref` with only `int8_units` int8 (the rest of the backbone, the input scaling, the features and
    the head float)."""
    from imgclf import quantize as Q

    float_layers = tuple(x for u, names in UNITS.items() if u not in int8_units for x in names) + tuple(extra_float)
    recipe = Q.Recipe(keep_float=BASE + ("features",), float_layers=float_layers, calibration_method=method)
    out = work / f"{name}.onnx"
    Q.quantize_file(ref.onnx_path, out, calib, recipe, calibration_cache=work / f"{method}.ranges")
    return _score(float_probs, out, val)


def sensitivity(args) -> None:
    """One unit int8 at a time (the damage each does alone), then units made int8 greedily, the least
    damaging first, with the agreement after each (all on the val split)."""
    from imgclf import quantize as Q
    from imgclf import registry

    lines, record = [], {"models": {}}
    for k, model_dir in enumerate(map(Path, args.models)):
        ref = registry.resolve(model_dir.parent.parent, f"{model_dir.parent.name}:{model_dir.name}")
        splits = Q._model_splits(ref, "--check DIR")
        val = _val_images(ref, splits, args.extra[k] if args.extra else None)
        calib = Q.calibration_images(ref, ref.spec, splits=splits).pixels
        probs = Q._probabilities(ref.onnx_path, val.pixels)
        work = Path(tempfile.mkdtemp(prefix="int8-sens-"))
        one, greedy = {}, []
        try:
            for unit in UNITS:
                one[unit] = _try(ref, work, calib, val, probs, unit, [unit], args.method)
                lines.append(f"{model_dir} only {unit:9s} int8: agreement {100 * one[unit]['top1_agreement']:.2f}% "
                             f"({one[unit]['changed_labels']} changed), mean TV {one[unit]['mean_tv']:.4f}")
                print(lines[-1], file=sys.stderr, flush=True)
            order = sorted(UNITS, key=lambda u: one[u]["mean_tv"])
            for k in range(1, len(order) + 1):
                fig = _try(ref, work, calib, val, probs, f"greedy{k}", order[:k], args.method)
                greedy.append(dict(fig, int8_units=order[:k]))
                lines.append(f"{model_dir} greedy {k:2d} int8 (+{order[k - 1]}): agreement "
                             f"{100 * fig['top1_agreement']:.2f}% ({fig['changed_labels']} changed), accuracy "
                             f"{100 * fig['fp32_accuracy']:.2f} -> {100 * fig['int8_accuracy']:.2f}%, mean TV "
                             f"{fig['mean_tv']:.4f}")
                print(lines[-1], file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record["models"][str(model_dir)] = {"one_unit": one, "greedy": greedy}
    C.emit("int8_pretrained_sensitivity", lines, record)


def precision(args) -> None:
    """Where the loss comes from: the default recipe's float set, with 8- or 16-bit weights and activations
    (16 bits is a diagnostic only: onnxruntime's CPU provider has no fast kernels for it), on val (+ --extra)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from imgclf import quantize as Q
    from imgclf import registry

    types = {"W8A8": (QuantType.QInt8, QuantType.QUInt8), "W8A16": (QuantType.QInt8, QuantType.QUInt16),
             "W16A8": (QuantType.QInt16, QuantType.QUInt8), "W16A16": (QuantType.QInt16, QuantType.QUInt16)}
    lines, record = [], {"models": {}}
    for k, model_dir in enumerate(map(Path, args.models)):
        ref = registry.resolve(model_dir.parent.parent, f"{model_dir.parent.name}:{model_dir.name}")
        splits = Q._model_splits(ref, "--check DIR")
        val = _val_images(ref, splits, args.extra[k] if args.extra else None)
        calib = Q.calibration_images(ref, ref.spec, splits=splits).pixels
        probs = Q._probabilities(ref.onnx_path, val.pixels)
        work = Path(tempfile.mkdtemp(prefix="int8-precision-"))
        entry = {}
        try:
            prepared = work / "prepared.onnx"
            Q._prepare(ref.onnx_path, prepared)
            graph = onnx.load(str(prepared)).graph
            keep = Q.float_nodes(graph, Q.recipe_for(ref.metadata))
            for name, (weights, activations) in types.items():
                out = work / f"{name}.onnx"
                quantize_static(str(prepared), str(out), Q._Reader(graph.input[0].name, calib),
                                quant_format=QuantFormat.QDQ, per_channel=True, weight_type=weights,
                                activation_type=activations, calibrate_method=CalibrationMethod.MinMax,
                                nodes_to_exclude=keep, calibration_cache_path=work / "ranges.json")
                entry[name] = _score(probs, out, val)
                lines.append(f"{model_dir} {name:6s} on {len(val.paths)} images: agreement "
                             f"{100 * entry[name]['top1_agreement']:.2f}% ({entry[name]['changed_labels']} changed), "
                             f"mean TV {entry[name]['mean_tv']:.4f}")
                print(lines[-1], file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record["models"][str(model_dir)] = entry
    C.emit("int8_pretrained_precision", lines, record)


def report(args) -> None:
    lines, record = [], {"rounds": args.rounds, "seconds_per_child": args.seconds, "models": {}}
    for model_dir in map(Path, args.models):
        name, root = model_dir.parent.name, model_dir.parent.parent
        cmd = C.imgclf_cmd("export", f"{name}:{model_dir.name}", "--registry", str(root), "--quantize", "int8",
                           "--force", "-q")
        C.run_child(cmd)
        int8 = json.loads((model_dir / "metadata.json").read_text())["int8"]
        check = int8["check"]
        files = {"fp32": model_dir / "model.onnx", "int8": model_dir / "model.int8.onnx"}
        runs = {"fp32": [], "int8": []}
        # over the test split's images, each at least once (a float fallback's cost depends on the image)
        from imgclf import quantize as Q
        from imgclf import registry

        test = Q.prepare_images(registry.resolve(root, f"{name}:{model_dir.name}"))[1]
        work = Path(tempfile.mkdtemp(prefix="int8-report-"))
        np.save(work / "test.npy", test.pixels)
        for _ in range(args.rounds):
            for precision in ("fp32", "int8"):
                runs[precision].append(_speed_on(files[precision], work / "test.npy", args.seconds))
        shutil.rmtree(work, ignore_errors=True)
        wall = [b["images_per_s"] / a["images_per_s"] for a, b in zip(runs["fp32"], runs["int8"])]
        cpu = [a["cpu_ms_per_image"] / b["cpu_ms_per_image"] for a, b in zip(runs["fp32"], runs["int8"])]
        record["models"][str(model_dir)] = {"command": " ".join(cmd), "int8": int8, "runs": runs,
                                            "speedup_per_round": wall, "cpu_saving_per_round": cpu}
        lines.append(f"{model_dir}: `{' '.join(cmd[2:])}`: test {check['images']} images of {check['source']}: "
                     f"agreement {100 * check['top1_agreement']:.2f}% ({check['changed_labels']} changed), accuracy "
                     f"fp32 {100 * check['fp32_accuracy']:.2f}% -> int8 {100 * check['int8_accuracy']:.2f}% (drop "
                     f"{check['accuracy_drop_points']:.2f} points), max |dp| {check['max_abs_diff']:.3f}; file "
                     f"{int8['fp32_bytes'] / 2**20:.2f} -> {int8['bytes'] / 2**20:.2f} MiB; float: "
                     f"{','.join(int8['keep_float'] + int8['float_layers'])}; {int8['calibration_method']}; bias correction "
                     f"of {int8.get('bias_corrected_convs', 0)} convolutions")
        fb = check.get("float_fallback")
        if fb:
            lines.append(f"  float fallback (margin {fb['margin']:g}): {100 * fb['answered_in_float']:.1f}% of the test "
                         f"images answered in float; the int8 network alone: agreement "
                         f"{100 * fb['int8_alone_top1_agreement']:.2f}% ({fb['int8_alone_changed_labels']} changed), "
                         f"accuracy {100 * fb['int8_alone_accuracy']:.2f}%, {fb['int8_alone_bytes'] / 2**20:.2f} MiB")
        lines.append(f"  batch 1: int8/fp32 images/s per round {', '.join(f'{x:.2f}' for x in wall)} (median "
                     f"{C.median(wall):.2f}); fp32/int8 CPU per image {', '.join(f'{x:.2f}' for x in cpu)} "
                     f"(median {C.median(cpu):.2f})")
    C.emit("int8_pretrained_report", lines, record)


def _compare_one(ref, model_dir: Path, name: str, calib, sets: dict, args, work: Path) -> tuple:
    """(figures, line) of recipe `name` on `ref`: agreement and accuracy on each of `sets`, batch-1 speed."""
    from imgclf import quantize as Q

    out = work / f"{name}.onnx"
    recipe = Q.Recipe(**RECIPES[name])
    # (equalized graphs have other activation ranges: one cache per strength)
    info = Q.quantize_file(ref.onnx_path, out, calib, recipe, calibration_cache=work / f"MinMax-eq{recipe.equalize:g}.ranges")
    figures = {k: Q.agreement(ref.onnx_path, out, images, ref.metadata["class_names"])[0] for k, images in sets.items()}
    runs = [(_speed(ref.onnx_path, 1, args.seconds), _speed(out, 1, args.seconds)) for _ in range(args.rounds)]
    wall = C.median([b["images_per_s"] / a["images_per_s"] for a, b in runs])
    cpu = C.median([a["cpu_ms_per_image"] / b["cpu_ms_per_image"] for a, b in runs])
    record = dict(figures, speedup_b1=wall, cpu_saving_b1=cpu, runs=runs, settings=info)
    line = f"{model_dir} {name}: " + "; ".join(
        f"{k} {f['images']}: agreement {100 * f['top1_agreement']:.2f}% ({f['changed_labels']} changed), accuracy "
        f"{100 * f['fp32_accuracy']:.2f} -> {100 * f['int8_accuracy']:.2f}%" for k, f in figures.items()) + \
        f"; batch 1 int8/fp32 images/s {wall:.2f}x, CPU {cpu:.2f}x (medians of {args.rounds})"
    return record, line


def _model_sets(model_dir: Path, extra=None):
    """(model ref, calibration images as `imgclf export` takes them, {"val+": val split plus `extra`, "test"})."""
    from imgclf import quantize as Q
    from imgclf import registry

    ref = registry.resolve(model_dir.parent.parent, f"{model_dir.parent.name}:{model_dir.name}")
    calib, test = Q.prepare_images(ref)
    return ref, calib, {"val+": _val_images(ref, Q._model_splits(ref, "--check DIR"), extra), "test": test}


def compare(args) -> None:
    """The named recipes side by side on val+ and test, with batch-1 speed (see the module's docstring)."""

    lines, record = [], {"rounds": args.rounds, "seconds_per_child": args.seconds, "models": {}}
    for k, model_dir in enumerate(map(Path, args.models)):
        ref, calib, sets = _model_sets(model_dir, args.extra[k] if args.extra else None)
        work = Path(tempfile.mkdtemp(prefix="int8-compare-"))
        entry = {}
        try:
            for name in args.recipes:
                entry[name], line = _compare_one(ref, model_dir, name, calib.pixels, sets, args, work)
                lines.append(line)
                print(line, file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record["models"][str(model_dir)] = entry
    lines.append("command: python bench/int8_pretrained.py " + " ".join(sys.argv[1:]))
    C.emit("int8_pretrained_compare", lines, record)

#: a timed child over real images (the fallback's cost depends on the image: a random-pixel batch says nothing)
IMAGES_CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
path, pixels, seconds = sys.argv[1], np.load(sys.argv[2]), float(sys.argv[3])
opts = ort.SessionOptions()
opts.log_severity_level = 3
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
x = pixels.astype(np.float32)
for i in range(3):
    sess.run(None, {name: x[i:i + 1]})
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
n, w0, c0 = 0, time.perf_counter(), cpu()
while time.perf_counter() - w0 < seconds or n < len(x):
    sess.run(None, {name: x[n % len(x)][None]})
    n += 1
print(json.dumps({"images": n, "wall": time.perf_counter() - w0, "cpu": cpu() - c0}))
"""


def _speed_on(model: Path, pixels_npy: Path, seconds: float) -> dict:
    """Batch-1 images/s and CPU ms per image of `model` over the images of `pixels_npy` (each at least once)."""
    d = C.run_child([sys.executable, "-c", IMAGES_CHILD, str(model), str(pixels_npy), str(seconds)]).json_line()
    return {"images_per_s": d["images"] / d["wall"], "cpu_ms_per_image": 1000 * d["cpu"] / d["images"]}


def fallback(args) -> None:
    """The int8 file with a float fallback for close calls (imgclf/fallback.py): agreement, accuracy and the
    fallback share against the margin on val+ (the margin is chosen on these), then, at --margin, the real
    file's figures on val+ and test and its batch-1 speed over the test images, fp32, int8 and fallback
    interleaved."""
    import onnx

    from imgclf import fallback as F
    from imgclf import quantize as Q

    lines, record = [], {"rounds": args.rounds, "seconds_per_child": args.seconds, "margin": args.margin,
                         "margins": args.margins, "models": {}}
    for k, model_dir in enumerate(map(Path, args.models)):
        ref, calib, sets = _model_sets(model_dir, args.extra[k] if args.extra else None)
        work = Path(tempfile.mkdtemp(prefix="int8-fallback-"))
        entry = {"sweep": {}, "file": {}}
        try:
            int8 = work / "int8.onnx"
            recipe = Q.Recipe(**RECIPES[args.recipe]) if args.recipe else Q.recipe_for(ref.metadata)
            Q.quantize_file(ref.onnx_path, int8, calib.pixels, dataclasses.replace(recipe, float_fallback=0.0))
            probs = {s: (Q._probabilities(ref.onnx_path, im.pixels), Q._probabilities(int8, im.pixels))
                     for s, im in sets.items()}
            for m in args.margins:
                row = {}
                for s, (p32, p8) in probs.items():
                    if s == "test":
                        continue   # the margin is chosen on val+ only
                    y = sets[s].labels
                    pf = F.simulate(p32, p8, m)
                    row[s] = {"agreement": float(np.mean(pf.argmax(1) == p32.argmax(1))),
                              "fallback": float(np.mean(F.close_calls(p8, m))),
                              "fp32_accuracy": float(np.mean(p32.argmax(1) == y)),
                              "accuracy": float(np.mean(pf.argmax(1) == y))}
                entry["sweep"][m] = row
                v = row["val+"]
                line = (f"{model_dir} margin {m:g}: val+ {len(sets['val+'].labels)}: agreement "
                        f"{100 * v['agreement']:.2f}%, float on {100 * v['fallback']:.1f}%, accuracy "
                        f"{100 * v['fp32_accuracy']:.2f} -> {100 * v['accuracy']:.2f}%")
                lines.append(line)
                print(line, file=sys.stderr, flush=True)
            built = work / "fallback.onnx"
            onnx.save(F.build(onnx.load(str(ref.onnx_path)), onnx.load(str(int8)), args.margin), str(built))
            files = {"fp32": ref.onnx_path, "int8": int8, "fallback": built}
            for s, im in sets.items():
                p32 = probs[s][0]
                pb = Q._probabilities(built, im.pixels)
                entry["file"][s] = {"images": int(len(im.labels)),
                                    "agreement": float(np.mean(pb.argmax(1) == p32.argmax(1))),
                                    "changed": int(np.sum(pb.argmax(1) != p32.argmax(1))),
                                    "int8_agreement": float(np.mean(probs[s][1].argmax(1) == p32.argmax(1))),
                                    "fallback": float(np.mean(F.close_calls(probs[s][1], args.margin))),
                                    "fp32_accuracy": float(np.mean(p32.argmax(1) == im.labels)),
                                    "accuracy": float(np.mean(pb.argmax(1) == im.labels)),
                                    "max_abs_diff_vs_simulated": float(np.max(np.abs(
                                        pb - F.simulate(p32, probs[s][1], args.margin))))}
            npy = work / "test_pixels.npy"
            np.save(npy, sets["test"].pixels)
            runs = {p: [] for p in files}
            for _ in range(args.rounds):
                for p, f in files.items():
                    runs[p].append(_speed_on(f, npy, args.seconds))
            speed = {p: C.median([b["images_per_s"] / a["images_per_s"] for a, b in zip(runs["fp32"], runs[p])])
                     for p in ("int8", "fallback")}
            cpu = {p: C.median([a["cpu_ms_per_image"] / b["cpu_ms_per_image"] for a, b in zip(runs["fp32"], runs[p])])
                   for p in ("int8", "fallback")}
            sizes = {p: f.stat().st_size for p, f in files.items()}
            entry.update(runs=runs, speedup_b1=speed, cpu_saving_b1=cpu, bytes=sizes)
            for s, f in entry["file"].items():
                lines.append(f"{model_dir} fallback file, margin {args.margin:g}, {s} {f['images']}: agreement "
                             f"{100 * f['agreement']:.2f}% ({f['changed']} changed; int8 alone "
                             f"{100 * f['int8_agreement']:.2f}%), float on {100 * f['fallback']:.1f}%, accuracy "
                             f"{100 * f['fp32_accuracy']:.2f} -> {100 * f['accuracy']:.2f}%, max |p - simulated| "
                             f"{f['max_abs_diff_vs_simulated']:.1e}")
            lines.append(f"{model_dir} batch 1 over the test images, vs fp32 (medians of {args.rounds}): int8 "
                         f"{speed['int8']:.2f}x images/s ({cpu['int8']:.2f}x CPU), fallback {speed['fallback']:.2f}x "
                         f"({cpu['fallback']:.2f}x CPU); files {', '.join(f'{p} {b / 2**20:.2f} MiB' for p, b in sizes.items())}")
            print("\n".join(lines[-3:]), file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record["models"][str(model_dir)] = entry
    lines.append("command: python bench/int8_pretrained.py " + " ".join(sys.argv[1:]))
    C.emit("int8_pretrained_fallback", lines, record)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["choose", "sensitivity", "precision", "report", "compare", "fallback"])
    ap.add_argument("models", nargs="+", help="registry version folders (REGISTRY/NAME/VERSION)")
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=None, help="choose: these only; compare: these")
    ap.add_argument("--method", default="MinMax", choices=["MinMax", "Entropy", "Percentile"],
                    help="sensitivity: the calibration method")
    ap.add_argument("--extra", nargs="+", default=None,
                    help="choose, sensitivity, precision, compare: one folder per model of unseen images scored with its "
                         "val split")
    ap.add_argument("--rounds", type=int, default=3, help="report, compare: A B rounds at batch 1")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per child")
    ap.add_argument("--margins", nargs="+", type=float, default=[0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4],
                    help="fallback: the margins swept on val+")
    ap.add_argument("--margin", type=float, default=0.2, help="fallback: the margin of the file measured")
    ap.add_argument("--recipe", choices=list(RECIPES), default=None,
                    help="fallback: the int8 network's recipe (default: the model's default recipe)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.mode == "compare" and not args.recipes:
        ap.error("compare needs --recipes NAME...")
    {"choose": choose, "sensitivity": sensitivity, "precision": precision, "report": report,
     "compare": compare, "fallback": fallback}[args.mode](args)


if __name__ == "__main__":
    main()
