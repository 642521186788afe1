"""`imgclf export --quantize int8`: the float ONNX file -> `model.int8.onnx`, kept only when it still
classifies the model's held-out images as the float file does.

- Static quantization (onnxruntime.quantization.quantize_static), QDQ format, int8 weights per output
  channel, uint8 activations, MinMax ranges calibrated on images of the model's own training split
  (decoded by preprocessing.load_image, exactly as training saw them). Never dynamic quantization:
  for convolutions it emits ConvInteger, which onnxruntime's CPU provider cannot run (onnxruntime
  issue 15888). The final Softmax stays float, so probabilities keep their resolution; so does the
  arithmetic of a nearest-neighbour memory (memory.py), whose stored features become int8 weights only.
- The agreement check runs both files on held-out images (the model's test split, else val, else the
  folder given): accuracy of each, top-1 agreement, max |dp| and the images whose label changed (a CSV
  in the model folder). A drop in accuracy of more than `max_accuracy_drop` points refuses the file.
- The int8 file carries the float file's metadata_props (class names, preprocessing) plus the
  quantization settings; metadata.json records the settings and the check (`int8`, or `int8_rejected`
  for a file that failed and was not saved).

Needs onnx and onnxruntime only: TensorFlow is not imported here.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from imgclf import memory, registry
from imgclf.config import (QUANTIZE_CALIBRATION_IMAGES, QUANTIZE_MAX_ACCURACY_DROP,
                           QUANTIZE_MOBILENET_V2_BIAS_CORRECTION, QUANTIZE_MOBILENET_V2_EQUALIZE,
                           QUANTIZE_MOBILENET_V2_FLOAT_FALLBACK,
                           QUANTIZE_MOBILENET_V2_FLOAT_LAYERS,
                           QUANTIZE_PRETRAINED_CALIBRATION, QUANTIZE_PRETRAINED_KEEP_FLOAT)
from imgclf.errors import DataError, QuantizeError, UsageError
from imgclf.onnx_meta import cpu_session
from imgclf.preprocessing import PreprocessingSpec

INT8_FILE = registry.INT8_ONNX_FILE
#: images of the training split the ranges are calibrated on, unless told otherwise
DEFAULT_CALIBRATION_IMAGES = QUANTIZE_CALIBRATION_IMAGES
#: the int8 file is refused when its held-out accuracy is this many points (percent) below the float file's
DEFAULT_MAX_ACCURACY_DROP = QUANTIZE_MAX_ACCURACY_DROP
CHANGED_CSV = "int8_changed_labels.csv"
CALIBRATION_BATCH = 16


@dataclass
class ImageSet:
    """Decoded images with where they came from (labels are -1 where there are none, as in calibration)."""

    pixels: np.ndarray
    labels: np.ndarray
    paths: List[str]
    source: str        # a folder, for messages and metadata
    skipped: List[Tuple[str, str]]


# ------------------------------------------------------------------------------------------ the images

def _model_splits(ref: registry.ModelRef, hint: str, reporter=None):
    """The model's own train/val/test, rebuilt as training made them (the same folder, val_split, seed).
    Warns when the files are no longer those training saw (the recorded fingerprint differs)."""
    from imgclf.data.split import load_splits
    from imgclf.data.files import fingerprint

    dataset = ref.metadata.get("dataset") or {}
    source = dataset.get("source")
    if not source:
        raise DataError(f"{ref.label}: metadata.json records no training data; pass {hint}")
    if not Path(source).is_dir():
        raise DataError(f"{source}: the training data of {ref.label} (recorded in metadata.json) is not found; "
                        f"pass {hint}")
    cfg = ref.metadata.get("config") or {}
    splits = load_splits(source, float(cfg.get("val_split", 0.1)) if dataset.get("val_held_out") else 0.0,
                         int(ref.metadata.get("seed", cfg.get("seed", 42))))
    if list(splits.class_names) != list(ref.metadata["class_names"]):
        raise DataError(f"{source}: its classes ({', '.join(splits.class_names)}) are no longer the model's "
                        f"({', '.join(ref.metadata['class_names'])}); pass {hint}")
    paths = [p for d in (splits.train, splits.val, splits.test) if d is not None for p in d.paths]
    if reporter and dataset.get("fingerprint") and fingerprint(paths) != dataset["fingerprint"]:
        reporter.warn(f"{source}: the files changed since {ref.label} was trained; its held-out split may now "
                      f"hold images it trained on (pass --check DIR to be sure)")
    return splits


def _image_files(folder: Path) -> Tuple[Path, List[str]]:
    """(the folder used, every image file below it): a split root's train/ only, never its held-out images."""
    from imgclf.data.scan import find_split_dirs, is_image_name, is_junk, walk_files

    dirs = find_split_dirs(folder)
    root = dirs["train"] if dirs else folder
    return root, [f for f in walk_files(str(root)) if is_image_name(os.path.basename(f))
                  and not is_junk(os.path.basename(f))]


def _decode(paths: Sequence[str], labels: Sequence[int], spec: PreprocessingSpec, source: str,
            reporter=None, what: str = "decoding") -> ImageSet:
    from imgclf.data.pipeline import decode

    if reporter:
        with reporter.progress(what, total=len(paths)) as advance:
            d = decode(paths, labels, spec, progress=advance)
    else:
        d = decode(paths, labels, spec)
    skipped = [(e.path, e.reason) for e in d.problems]
    if reporter:
        for path, reason in skipped:
            reporter.warn(f"skipped {path}: {reason}")
    return ImageSet(np.asarray(d.pixels), np.asarray(d.labels), list(d.paths), source, skipped)


def calibration_images(ref: registry.ModelRef, spec: PreprocessingSpec, folder: Optional[Path] = None,
                       count: int = DEFAULT_CALIBRATION_IMAGES, reporter=None, splits=None) -> ImageSet:
    """Up to `count` images (a seeded random choice) of `folder` (every image below it; a split root's
    train/ only), else of the model's own training split."""
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"--calibration {folder}: folder not found")
        root, paths = _image_files(folder)
        if not paths:
            raise DataError(f"--calibration {root}: no image files in it")
        source = os.path.abspath(root)
    else:
        splits = splits or _model_splits(ref, "--calibration DIR")
        paths, source = splits.train.paths, os.path.abspath(splits.train.root)
        if not paths:
            raise DataError(f"{source}: no training images left to calibrate on; pass --calibration DIR")
    rng = np.random.default_rng(int(ref.metadata.get("seed", 42)))
    if len(paths) > count:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), size=count, replace=False))]
    images = _decode(paths, [-1] * len(paths), spec, source, reporter, "decoding calibration images")
    if not len(images.paths):
        raise DataError(f"{source}: none of the {len(paths)} calibration images could be decoded")
    return images


def held_out_images(ref: registry.ModelRef, spec: PreprocessingSpec, folder: Optional[Path] = None,
                    reporter=None, splits=None) -> ImageSet:
    """Labelled images the model never trained on: `folder` (a split root: its test/, else val/; or a
    class-folder tree), else the model's test split, else its val split."""
    from imgclf.data.scan import find_split_dirs, scan

    class_names = ref.metadata["class_names"]
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"--check {folder}: folder not found")
        dirs = find_split_dirs(folder)
        ds = scan(dirs.get("test") or dirs["val"] if dirs else folder, class_names=class_names)
    else:
        splits = splits or _model_splits(ref, "--check DIR")
        ds = splits.test if splits.test is not None and splits.test.samples else splits.val
        if ds is None or not ds.samples:
            raise DataError(f"{ref.label}: no held-out images (no test or val split); pass --check DIR")
    if reporter:
        for p in ds.problems:
            reporter.warn(f"skipped {p.path}: {p.reason}")
    if not ds.samples:
        raise DataError(f"{ds.root}: no usable images for the agreement check")
    images = _decode(ds.paths, ds.labels, spec, os.path.abspath(ds.root), reporter, "decoding check images")
    images.skipped = [(p.path, p.reason) for p in ds.problems] + images.skipped
    if not len(images.paths):
        raise DataError(f"{ds.root}: none of its images could be decoded for the agreement check")
    return images


# ---------------------------------------------------------------------------------------- quantization

class _Reader:
    """onnxruntime's CalibrationDataReader protocol: one batch of float32 raw pixels per call."""

    def __init__(self, input_name: str, pixels: np.ndarray, batch: int = CALIBRATION_BATCH):
        self.input_name, self.pixels, self.batch, self.i = input_name, pixels, batch, 0

    def get_next(self):
        if self.i >= len(self.pixels):
            return None
        x = self.pixels[self.i:self.i + self.batch].astype(np.float32)
        self.i += self.batch
        return {self.input_name: x}

    def rewind(self):
        self.i = 0


#: Recipe.weight_rounding's choices
WEIGHT_ROUNDINGS = ("nearest", "gptq")


@dataclass(frozen=True)
class Recipe:
    """How a float file becomes int8: static QDQ, int8 weights, uint8 activations, and these choices.

    keep_float: which parts of the graph stay float, from
      "softmax"    the final Softmax (uint8 probabilities, steps of 1/255, would tie close classes);
      "memory"     the nearest-neighbour memory and its blend (memory.py): its similarities are divided by a
                   temperature of 0.02 before exp, which would turn uint8 steps into 30% changes of a vote;
      "features"   the pooled features (the "gap" layer) and everything after them (the head): the memory's
                   input, and the logits, whose uint8 steps flip close calls;
      "first_conv" the first convolution (raw pixels in);
      "adds"       the residual additions;
      "depthwise"  the depthwise convolutions.
    float_tail_convs: the last this many convolutions, and everything after them, stay float too.
    float_layers: the nodes of these Keras layers stay float, a name standing for itself and the layers it
      begins, "block_16" for "block_16_expand", "block_16_project", ... (not "block_1" for "block_16").
    bias_correction: each int8 convolution's bias absorbs the mean error its int8 weights add to its output,
      (W_int8 - W) . E[input] per output channel, E[input] measured in the float graph on calibration images
      (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction", 4.2).
    weight_rounding: how each int8 convolution's weights are rounded to the scales the quantizer chose:
      "nearest" (the quantizer's own), or "gptq": column by column, each column's rounding error spread over
      the columns not yet rounded so as to keep the layer's output on calibration images (Frantar et al. 2022,
      "GPTQ"; Optimal Brain Quantization). Same scales, zero points and int8 range: the graph is unchanged.
    equalize: before calibration, each residual stream's channels are scaled towards the stream's full range
      and the convolutions reading it are scaled back (equalize.py; the float network unchanged), so small
      channels get more of the uint8 steps; the value is the strength (0 off, 1 the full ratio of ranges, capped).
    """

    per_channel: bool = True
    calibration_method: str = "MinMax"      # MinMax | Entropy | Percentile
    keep_float: Tuple[str, ...] = ("softmax", "memory")
    symmetric_activations: bool = False
    float_tail_convs: int = 0
    float_layers: Tuple[str, ...] = ()
    bias_correction: bool = False
    weight_rounding: str = "nearest"        # nearest | gptq
    float_fallback: float = 0.0
    equalize: float = 0.0

    def __post_init__(self):
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise UsageError(f"weight_rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, "
                             f"got {self.weight_rounding!r}")
        if self.equalize < 0:
            raise UsageError(f"equalize must be a strength of 0 or more, got {self.equalize:g}")
        if not (0.0 <= self.float_fallback <= 1.0):
            raise UsageError(f"--float-fallback must be a probability margin from 0 to 1, got {self.float_fallback:g}")

    def describe(self) -> dict:
        return {"method": "static", "format": "QDQ", "weights": "int8", "activations": "uint8",
                "per_channel": self.per_channel, "calibration_method": self.calibration_method,
                "symmetric_activations": self.symmetric_activations, "keep_float": list(self.keep_float), "float_tail_convs": self.float_tail_convs,
                "float_layers": list(self.float_layers), "bias_correction": self.bias_correction,
                "weight_rounding": self.weight_rounding, "float_fallback": self.float_fallback,
                "equalize": self.equalize}


#: the cnn's recipe (issue 13): 99.55% agreement on Fashion-MNIST
SCRATCH_RECIPE = Recipe()
#: the pretrained MobileNets' recipe (issue 34), chosen on val splits (docs/benchmarks.md); mobilenet_v2 keeps
#: its first layers float too (the MobileNetV3s' layers have other names, and were not measured)
PRETRAINED_RECIPE = Recipe(keep_float=tuple(QUANTIZE_PRETRAINED_KEEP_FLOAT),
                           calibration_method=QUANTIZE_PRETRAINED_CALIBRATION)
MOBILENET_V2_RECIPE = dataclasses.replace(PRETRAINED_RECIPE, float_layers=tuple(QUANTIZE_MOBILENET_V2_FLOAT_LAYERS),
                                          bias_correction=QUANTIZE_MOBILENET_V2_BIAS_CORRECTION,
                                          float_fallback=QUANTIZE_MOBILENET_V2_FLOAT_FALLBACK,
                                          equalize=QUANTIZE_MOBILENET_V2_EQUALIZE)


def recipe_for(metadata: dict) -> Recipe:
    """The recipe a model gets by default, by its architecture."""
    arch = str(metadata.get("arch", ""))
    if arch == "mobilenet_v2":
        return MOBILENET_V2_RECIPE
    return PRETRAINED_RECIPE if arch.startswith("mobilenet") else SCRATCH_RECIPE


def _short_error(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _prepare(float_path: Path, prepared: Path) -> None:
    """Constant folding and fusions (batch norm into the convolutions), and shapes for every tensor: a
    tensor of unknown shape is left in float. (Symbolic shape inference is for transformers; it needs sympy.)"""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    except Exception as e:
        raise QuantizeError(f"{float_path}: preparing for quantization failed ({_short_error(e)})") from None


def _downstream(graph, start: List[str]) -> set:
    """Names of the nodes in `start` and of every node fed, directly or not, by their outputs."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {n.name: n for n in graph.node}
    seen, todo = set(), [by_name[s] for s in start]
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        todo.extend(c for out in node.output for c in consumers.get(out, []))
    return seen


def in_layers(node_name: str, layers: Sequence[str]) -> bool:
    """Whether an exported (tf2onnx) node belongs to one of `layers` (Recipe.float_layers): a segment of its
    name, less tf2onnx's "_1" suffix, is one of them or begins with one and "_"."""
    segments = [s for seg in node_name.split("/") for s in (seg, seg.rpartition("_")[0])]
    return any(s == layer or s.startswith(layer + "_") for s in segments for layer in layers)


def float_nodes(graph, recipe: Recipe) -> List[str]:
    """The names of the nodes of `graph` (a prepared float graph) that `recipe` keeps float."""
    keep_float, tail_convs = recipe.keep_float, recipe.float_tail_convs
    keep = set()
    convs = [n for n in graph.node if n.op_type == "Conv"]
    initializers = {i.name: i for i in graph.initializer}
    for node in graph.node:
        # (tf2onnx names some convolutions "Conv__N": their weights still carry the layer's name; other
        # constants, such as the Relu6 bounds, are shared by every layer and name only one of them)
        named = [node.name] + ([node.input[1]] if node.op_type == "Conv" else [])
        if ("softmax" in keep_float and node.op_type == "Softmax") or \
                any(in_layers(name, recipe.float_layers) for name in named) or \
                ("memory" in keep_float and memory.in_memory(node.name)) or \
                ("adds" in keep_float and node.op_type == "Add" and not memory.in_memory(node.name)
                 and all(i not in initializers for i in node.input)):
            keep.add(node.name)
    if "features" in keep_float:
        pooled = [n.name for n in graph.node if any(memory.FEATURES_LAYER in (seg, seg.rpartition("_")[0])
                                                    for seg in n.name.split("/"))]
        keep |= _downstream(graph, pooled) if pooled else set()
    if tail_convs > 0:
        keep |= _downstream(graph, [n.name for n in convs[-tail_convs:]])
    if "first_conv" in keep_float and convs:
        keep.add(convs[0].name)
    if "depthwise" in keep_float:
        keep |= {n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)}
    return [n.name for n in graph.node if n.name in keep]


def _quantize_static(prepared: Path, raw: Path, pixels: np.ndarray, input_name: str, recipe: Recipe,
                     keep: List[str], calibration_cache: Optional[Path] = None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"ActivationSymmetric": recipe.symmetric_activations}
    if recipe.calibration_method == "Percentile":
        extra["CalibPercentile"] = 99.999
    # the histogram calibrators (Entropy, Percentile) stack the batches: they must all be the same size
    batch = CALIBRATION_BATCH if recipe.calibration_method == "MinMax" else 1
    try:
        quantize_static(str(prepared), str(raw), _Reader(input_name, pixels, batch), quant_format=QuantFormat.QDQ,
                        per_channel=recipe.per_channel, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8,
                        calibrate_method=getattr(CalibrationMethod, recipe.calibration_method),
                        nodes_to_exclude=keep, extra_options=extra, calibration_cache_path=calibration_cache)
        # (not CalibMaxIntermediateOutputs: in onnxruntime 1.32 it drops the batches collected so far
        # without folding them into the ranges; the MinMax calibrator keeps only a min and a max per
        # tensor and batch anyway, so memory stays small without it)
    except Exception as e:
        raise QuantizeError(f"{prepared.name}: quantization failed ({_short_error(e)})") from None


def _save_with_metadata(model, source, info: dict, out_path: Path) -> None:
    """`model` saved to `out_path` with the float file's metadata_props plus the quantization settings."""
    import onnx

    props = {p.key: p.value for p in source.metadata_props}
    meta = json.loads(props.get("imgclf", "{}"))
    meta["quantization"] = info
    props["imgclf"] = json.dumps(meta)
    props["quantization"] = json.dumps(info)
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = source.producer_name or "imgclf"
    model.doc_string = (source.doc_string + " int8 (static QDQ) quantization.").strip()
    onnx.save(model, str(out_path))


def quantize_file(float_path: Path, out_path: Path, pixels: np.ndarray, recipe: Recipe = SCRATCH_RECIPE,
                  settings: Optional[dict] = None, calibration_cache: Optional[Path] = None,
                  int8_only: Optional[Path] = None) -> dict:
    """Write the static-QDQ int8 version of `float_path` to `out_path`, calibrated on `pixels` as `recipe`
    says, with the float file's metadata_props plus the quantization settings. Returns the settings.
    `calibration_cache`: a file of activation ranges, read when it exists (the pixels then unused), else
    written (for trying several recipes with the same calibration). With `recipe.float_fallback`, `out_path`
    holds the float network too (fallback.py), and `int8_only`, when given, gets the int8 network alone."""
    import onnx
    import onnxruntime as ort

    source = onnx.load(str(float_path))
    work = Path(tempfile.mkdtemp(prefix="imgclf-quantize-"))
    try:
        prepared, raw = work / "prepared.onnx", work / "int8.onnx"
        _prepare(float_path, prepared)
        equalized = _equalize(prepared, pixels, recipe.equalize) if recipe.equalize > 0 else 0
        graph = onnx.load(str(prepared)).graph
        keep = float_nodes(graph, recipe)
        _quantize_static(prepared, raw, pixels, source.graph.input[0].name, recipe, keep, calibration_cache)
        model = onnx.load(str(raw))
        rounded = _round_weights(prepared, model, pixels) if recipe.weight_rounding == "gptq" else 0
        corrected = _correct_biases(prepared, model, pixels) if recipe.bias_correction else 0
        stored = _int8_memory_features(model)
        info = dict(settings or {}, **recipe.describe(), float_nodes=len(keep), bias_corrected_convs=corrected,
                    equalized_streams=equalized,
                    gptq_rounded_convs=rounded,
                    float_ops=sorted({n.op_type for n in graph.node if n.name in set(keep)}),
                    onnxruntime=ort.__version__)
        if stored:
            info["memory"] = "stored features int8 (one scale per stored image), arithmetic float"
        if recipe.float_fallback > 0:
            from imgclf import fallback

            if int8_only is not None:
                _save_with_metadata(model, source, dict(info, float_fallback=0.0), int8_only)
            model = fallback.build(source, model, recipe.float_fallback)
        _save_with_metadata(model, source, info, out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def _equalize(prepared: Path, pixels: np.ndarray, strength: float) -> int:
    """Recipe.equalize on the prepared float file, in place (equalize.py); returns the residual streams rescaled."""
    import onnx

    from imgclf import equalize

    model = onnx.load(str(prepared))
    done = equalize.equalize(model, pixels, strength)
    onnx.save(model, str(prepared))
    return done


#: calibration images whose float activations give the bias correction its mean inputs
BIAS_CORRECTION_IMAGES = 64


def _channel_means(path: Path, tensors: Sequence[str], pixels: np.ndarray, batch: int = 8) -> dict:
    """{tensor: its mean per channel over images and positions} of NCHW `tensors` of the graph at `path`."""
    import onnx

    model = onnx.load(str(path))
    name = model.graph.input[0].name
    inner = [t for t in tensors if t != name]        # (the graph's input is the pixels themselves)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in inner)
    sess = cpu_session(model.SerializeToString())
    sums = {t: 0.0 for t in tensors}
    for i in range(0, len(pixels), batch):
        x = pixels[i:i + batch].astype(np.float32)
        values = dict(zip(inner, sess.run(inner, {name: x}) if inner else []), **{name: x})
        for t in tensors:
            sums[t] = sums[t] + values[t].astype(np.float64).mean(axis=(2, 3)).sum(axis=0)
    return {t: v / len(pixels) for t, v in sums.items()}


def _add_int8_bias(model, node, dequantize: dict) -> None:
    """A zero int32 bias for the int8 convolution `node`, scaled as the quantizer scales biases (input scale x
    weight scale per output channel), behind its own DequantizeLinear (added to `dequantize` too)."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    x_scale = numpy_helper.to_array(initializers[dequantize[node.input[0]].input[1]])
    w_scale = numpy_helper.to_array(initializers[dequantize[node.input[1]].input[1]])
    scale = (x_scale * w_scale).astype(np.float32).reshape(-1)
    name = f"{node.name}_corrected_bias"
    model.graph.initializer.extend([numpy_helper.from_array(np.zeros(scale.shape, np.int32), f"{name}_quantized"),
                                    numpy_helper.from_array(scale, f"{name}_scale"),
                                    numpy_helper.from_array(np.zeros(scale.shape, np.int32), f"{name}_zero_point")])
    dq = helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
                          [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=0)
    model.graph.node.insert(list(model.graph.node).index(node), dq)
    node.input.append(dq.output[0])
    dequantize[dq.output[0]] = dq


def _correct_biases(prepared: Path, model, pixels: np.ndarray) -> int:
    """Recipe.bias_correction on `model` (the QDQ graph of the float graph at `prepared`), in place: the int32
    bias of each int8 convolution minus (W_int8 - W) . E[input], E[input] per input channel from the float graph
    on up to BIAS_CORRECTION_IMAGES calibration images. Returns how many convolutions were corrected."""
    import onnx
    from onnx import numpy_helper

    source = onnx.load(str(prepared)).graph
    weights = {i.name: i for i in source.initializer}
    float_convs = {n.name: n for n in source.node if n.op_type == "Conv"}
    initializers = {i.name: i for i in model.graph.initializer}
    dequantize = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}

    def value(name):
        return numpy_helper.to_array(initializers[name])

    ends = {t.name for t in source.output}
    convs = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name in float_convs
             and n.input[0] in dequantize and n.input[1] in dequantize and float_convs[n.name].input[0] not in ends]
    for name in convs:
        node = next(n for n in model.graph.node if n.name == name)
        if len(node.input) < 3:                     # no bias (its shift is a separate Add): a zero one
            _add_int8_bias(model, node, dequantize)
    initializers = {i.name: i for i in model.graph.initializer}
    targets = []
    for node in (n for n in model.graph.node if n.name in set(convs)):
        if node.input[2] not in dequantize:
            continue
        w = dequantize[node.input[1]]
        zero = value(w.input[2]).reshape(-1, 1, 1, 1) if len(w.input) > 2 else 0
        int8 = (value(w.input[0]).astype(np.float32) - zero) * value(w.input[1]).reshape(-1, 1, 1, 1)
        error = int8 - numpy_helper.to_array(weights[float_convs[node.name].input[1]])
        grouped = next((a.i for a in node.attribute if a.name == "group"), 1) > 1
        if grouped and error.shape[1] != 1:         # grouped, not depthwise: not in these networks
            continue
        targets.append((dequantize[node.input[2]], float_convs[node.name].input[0], error, grouped))
    means = _channel_means(prepared, sorted({t[1] for t in targets}), pixels[:BIAS_CORRECTION_IMAGES])
    for bias, tensor, error, grouped in targets:
        shift = error.sum(axis=(1, 2, 3)) * means[tensor] if grouped else error.sum(axis=(2, 3)) @ means[tensor]
        corrected = value(bias.input[0]).astype(np.int64) - np.round(shift / value(bias.input[1])).astype(np.int64)
        initializers[bias.input[0]].CopyFrom(numpy_helper.from_array(
            np.clip(corrected, -2**31, 2**31 - 1).astype(np.int32), bias.input[0]))
    return len(targets)


#: calibration images whose float activations give the GPTQ rounding its Hessians (Recipe.weight_rounding)
GPTQ_IMAGES = 128
#: added to each Hessian's diagonal, as a fraction of its mean diagonal (1% in Frantar et al. 2022 too)
GPTQ_DAMPENING = 0.01
#: the int8 values onnxruntime's symmetric weights take (-128 is never used)
INT8_WEIGHT_RANGE = (-127, 127)


def _conv_patches(x: np.ndarray, node, kernel: Tuple[int, int]) -> Optional[np.ndarray]:
    """What each output position of the convolution `node` sees of its NCHW input `x`: (1, positions,
    C*kh*kw) for a full convolution (im2col, in the weights' C, kh, kw order), (C, positions, kh*kw) for a
    depthwise one. None for what is not handled here (auto_pad, dilations)."""
    from numpy.lib.stride_tricks import sliding_window_view
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID") \
            or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return None
    (kh, kw), (sh, sw) = kernel, attrs.get("strides", [1, 1])
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]    # N, C, Ho, Wo, kh, kw
    channels = x.shape[1]
    if attrs.get("group", 1) > 1:
        return windows.transpose(1, 0, 2, 3, 4, 5).reshape(channels, -1, kh * kw)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(1, -1, channels * kh * kw)


def _hessians(path: Path, convs: Sequence[Tuple[object, Tuple[int, ...]]], pixels: np.ndarray,
              batch: int = 8) -> dict:
    """{convolution name: H = sum of x x^T over the positions of its input patches, (1 or C, k, k)} for the
    (float node, weight shape) pairs `convs` of the float graph at `path`, on `pixels`. Convolutions whose
    patches `_conv_patches` cannot make are left out."""
    import onnx

    model = onnx.load(str(path))
    name = model.graph.input[0].name
    inner = sorted({node.input[0] for node, _ in convs} - {name})
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in inner)
    sess = cpu_session(model.SerializeToString())
    sums = {}
    for i in range(0, len(pixels), batch):
        x = pixels[i:i + batch].astype(np.float32)
        values = dict(zip(inner, sess.run(inner, {name: x}) if inner else []), **{name: x})
        for node, shape in convs:
            patches = _conv_patches(values[node.input[0]], node, tuple(shape[2:]))
            if patches is not None:
                sums[node.name] = sums.get(node.name, 0.0) + np.matmul(patches.transpose(0, 2, 1), patches)
    return sums


def gptq_round(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, zero: np.ndarray,
               damp: float = GPTQ_DAMPENING, bounds: Tuple[int, int] = INT8_WEIGHT_RANGE) -> np.ndarray:
    """The integer weights (R, k) of float rows `w` (R, k) on the grid (q - zero) * scale (one scale and zero
    per row, q within `bounds`) that GPTQ / Optimal Brain Quantization chooses (Frantar et al. 2022, alg. 1):
    columns rounded one at a time, in order of decreasing Hessian diagonal where the rows share one Hessian
    (hessian (1, k, k); (R, k, k): one per row, as for depthwise convolutions), each column's error spread
    over the columns left, weighted by the inverse Hessian, which keeps x^T w on the calibration inputs."""
    w, h = np.array(w, np.float64), np.array(hessian, np.float64)
    scale = np.broadcast_to(np.where(scale > 0, scale, 1.0), w.shape[:1]).astype(np.float64)
    zero = np.broadcast_to(zero, w.shape[:1]).astype(np.float64)
    k, diag = w.shape[1], np.diagonal(h, axis1=1, axis2=2).copy()
    dead = diag == 0                                    # inputs that were always 0: their weights do not matter
    h[:, np.arange(k), np.arange(k)] += damp * diag.mean(axis=1, keepdims=True) + dead
    w = np.where(dead, 0.0, w)
    order = np.argsort(-diag[0], kind="stable") if len(h) == 1 else np.arange(k)
    w, h = w[:, order], h[:, order][:, :, order]
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)    # H^-1 = U^T U, U upper
    except np.linalg.LinAlgError:
        return np.clip(np.round(w / scale[:, None]) + zero[:, None], *bounds)[:, np.argsort(order)]
    q = np.empty_like(w)
    for i in range(k):
        q[:, i] = np.clip(np.round(w[:, i] / scale) + zero, *bounds)
        error = (w[:, i] - (q[:, i] - zero) * scale) / u[:, i, i]
        w[:, i + 1:] -= error[:, None] * u[:, i, i + 1:]
    return q[:, np.argsort(order)]


def _round_weights(prepared: Path, model, pixels: np.ndarray) -> int:
    """Recipe.weight_rounding "gptq" on `model` (the QDQ graph of the float graph at `prepared`), in place:
    each int8 convolution's weight initializer rewritten by `gptq_round`, against its own scales and zero
    points, with Hessians of the float graph's inputs on up to GPTQ_IMAGES calibration images. Returns how
    many convolutions were rounded."""
    import onnx
    from onnx import helper, numpy_helper

    source = onnx.load(str(prepared)).graph
    weights = {i.name: i for i in source.initializer}
    float_convs = {n.name: n for n in source.node if n.op_type == "Conv"}
    initializers = {i.name: i for i in model.graph.initializer}
    dequantize = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    targets = []
    for node in model.graph.node:
        dq = dequantize.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if dq is None or node.name not in float_convs or dq.input[0] not in initializers:
            continue
        w = numpy_helper.to_array(weights[float_convs[node.name].input[1]])
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        if group == 1 or (w.shape[1] == 1 and group == w.shape[0]):     # full or depthwise, not other groups
            targets.append((float_convs[node.name], dq, w))
    hessians = _hessians(prepared, [(f, w.shape) for f, _, w in targets], pixels[:GPTQ_IMAGES])
    done = 0
    for node, dq, w in (t for t in targets if t[0].name in hessians):
        scale = numpy_helper.to_array(initializers[dq.input[1]]).reshape(-1)
        zero = numpy_helper.to_array(initializers[dq.input[2]]).reshape(-1) if len(dq.input) > 2 else np.zeros(1)
        q = gptq_round(w.reshape(len(w), -1), hessians[node.name], scale, zero)
        initializers[dq.input[0]].CopyFrom(numpy_helper.from_array(q.reshape(w.shape).astype(np.int8), dq.input[0]))
        done += 1
    return done


def _int8_memory_features(model) -> int:
    """Weight-only int8 for the nearest-neighbour memory's stored matrices (memory.py): each float
    initializer of a memory MatMul becomes int8 with one scale per column (one stored image) and a
    DequantizeLinear in front of the MatMul, whose arithmetic stays float. The stored features are most of
    such a model's bytes (8.8 MB of MobileNetV2's 17); an error of half a step per feature moves a cosine
    similarity by ~1e-3, 5% of the vote's temperature. Returns how many matrices were converted."""
    import onnx
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    targets = [n for n in model.graph.node if n.op_type == "MatMul" and memory.in_memory(n.name)
               and n.input[1] in initializers and initializers[n.input[1]].data_type == onnx.TensorProto.FLOAT]
    for node in targets:
        name = node.input[1]
        w = numpy_helper.to_array(initializers[name])
        scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / 127).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        model.graph.initializer.remove(initializers[name])
        model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                        numpy_helper.from_array(scale, f"{name}_scale"),
                                        numpy_helper.from_array(np.zeros_like(q[0]), f"{name}_zero_point")])
        dequantize = helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                                      [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=1)
        model.graph.node.insert(list(model.graph.node).index(node), dequantize)
        node.input[1] = f"{name}_dequantized"
    return len(targets)


# --------------------------------------------------------------------------------------- the check

def _probabilities(path: Path, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    sess = cpu_session(path)
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: pixels[i:i + batch].astype(np.float32)})[0] for i in range(0, len(pixels), batch)]
    return np.concatenate(out)


def agreement(float_path: Path, int8_path: Path, images: ImageSet, class_names: Sequence[str]):
    """(figures, rows of the images whose top-1 label changed) of the two files on `images`."""
    p32 = _probabilities(float_path, images.pixels)
    p8 = _probabilities(int8_path, images.pixels)
    l32, l8, y = p32.argmax(1), p8.argmax(1), images.labels
    acc32, acc8 = float(np.mean(l32 == y)), float(np.mean(l8 == y))
    figures = {"images": int(len(y)), "source": images.source, "fp32_accuracy": round(acc32, 6),
               "int8_accuracy": round(acc8, 6), "accuracy_drop_points": round(100 * (acc32 - acc8), 4),
               "top1_agreement": round(float(np.mean(l32 == l8)), 6),
               "max_abs_diff": float(np.max(np.abs(p32 - p8))), "changed_labels": int(np.sum(l32 != l8))}
    rows = [{"path": images.paths[i], "true": class_names[y[i]], "fp32_label": class_names[l32[i]],
             "fp32_confidence": round(float(p32[i, l32[i]]), 6), "int8_label": class_names[l8[i]],
             "int8_confidence": round(float(p8[i, l8[i]]), 6)} for i in np.flatnonzero(l32 != l8)]
    return figures, rows


def _write_changed(path: Path, rows: List[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "true", "fp32_label", "fp32_confidence", "int8_label",
                                          "int8_confidence"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ the entry

def prepare_images(ref: registry.ModelRef, calibration: Optional[Path] = None, check: Optional[Path] = None,
                   calibration_count: int = DEFAULT_CALIBRATION_IMAGES, reporter=None) -> Tuple[ImageSet, ImageSet]:
    """(calibration images, held-out check images), decoded with the model's preprocessing spec."""
    spec = ref.spec
    splits = None
    if calibration is None or check is None:
        missing = [o for o, v in (("--calibration DIR", calibration), ("--check DIR", check)) if v is None]
        splits = _model_splits(ref, " and ".join(missing), reporter)
    held = held_out_images(ref, spec, check, reporter, splits)
    calib = calibration_images(ref, spec, calibration, calibration_count, reporter, splits)
    overlap = set(held.paths) & set(calib.paths)
    if overlap:
        raise UsageError(f"--calibration {calib.source}: {len(overlap)} of its images are also check images "
                         f"(e.g. {sorted(overlap)[0]}); calibrate on training images")
    return calib, held


def quantize_model(ref: registry.ModelRef, calibration: Optional[Path] = None, check: Optional[Path] = None,
                   max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
                   calibration_count: int = DEFAULT_CALIBRATION_IMAGES, out: Optional[Path] = None,
                   force: bool = False, reporter=None, images: Optional[Tuple[ImageSet, ImageSet]] = None,
                   float_fallback: Optional[float] = None) -> dict:
    """Quantize the model's exported `model.onnx` to `model.int8.onnx` (and `out`, when given) after the
    agreement check. Raises QuantizeError, saving nothing, when the check fails and not `force`.
    `images`: (calibration, check) from `prepare_images`, else they are prepared here. `float_fallback`: the
    margin of the float fallback (Recipe.float_fallback; None: the architecture's default)."""
    _check_arguments(ref, calibration, check, calibration_count, max_accuracy_drop, out, force)
    recipe = recipe_for(ref.metadata)
    if float_fallback is not None:
        recipe = dataclasses.replace(recipe, float_fallback=float(float_fallback))
    if not ref.onnx_path.is_file():
        raise UsageError(f"model {ref.label} has no ONNX export to quantize; run `imgclf export {ref.label}`")
    class_names = list(ref.metadata["class_names"])
    calib, held = images or prepare_images(ref, calibration, check, calibration_count, reporter)
    if reporter:
        reporter.info(f"calibrating on {len(calib.paths)} images of {calib.source}")

    target = ref.path / INT8_FILE
    tmp = target.with_name(f".{INT8_FILE}.{uuid.uuid4().hex[:6]}.part")
    alone = target.with_name(f".{INT8_FILE}.{uuid.uuid4().hex[:6]}.alone.part")
    try:
        settings = quantize_file(ref.onnx_path, tmp, calib.pixels, recipe,
                                 settings={"calibration_images": len(calib.paths),
                                           "calibration_source": calib.source},
                                 int8_only=alone if recipe.float_fallback > 0 else None)
        figures, rows = agreement(ref.onnx_path, tmp, held, class_names)
        if recipe.float_fallback > 0:
            from imgclf import fallback

            int8_alone, _ = agreement(ref.onnx_path, alone, held, class_names)
            share = float(np.mean(fallback.close_calls(_probabilities(alone, held.pixels), recipe.float_fallback)))
            figures["float_fallback"] = {"margin": recipe.float_fallback, "answered_in_float": round(share, 6),
                                         "int8_alone_top1_agreement": int8_alone["top1_agreement"],
                                         "int8_alone_changed_labels": int8_alone["changed_labels"],
                                         "int8_alone_accuracy": int8_alone["int8_accuracy"],
                                         "int8_alone_bytes": alone.stat().st_size}
        changed_csv = ref.path / CHANGED_CSV
        _write_changed(changed_csv, rows)
        passed = figures["accuracy_drop_points"] <= max_accuracy_drop
        record = dict(settings, check=dict(figures, max_accuracy_drop=max_accuracy_drop, passed=passed,
                                           changed_csv=str(changed_csv)))
        if not passed and not force:
            registry.update_metadata(ref, int8_rejected=record)
            kept = f"; the earlier {INT8_FILE} is kept" if target.is_file() else ""
            raise QuantizeError(
                f"{ref.label}: int8 accuracy {figures['int8_accuracy']:.4f} vs fp32 {figures['fp32_accuracy']:.4f} "
                f"on {figures['images']} held-out images of {held.source} (drop {figures['accuracy_drop_points']:.2f} "
                f"points > --max-accuracy-drop {max_accuracy_drop:g}); {INT8_FILE} not saved (changed labels: "
                f"{changed_csv}; --force saves it anyway){kept}")
        record["bytes"] = tmp.stat().st_size
        record["fp32_bytes"] = ref.onnx_path.stat().st_size
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            part = Path(out).with_name(f".{Path(out).name}.{uuid.uuid4().hex[:6]}.part")
            shutil.copyfile(tmp, part)
            os.replace(part, out)
        os.replace(tmp, target)
    finally:
        for part in (tmp, alone):
            if part.exists():
                part.unlink()
    had_rejected = "int8_rejected" in ref.metadata
    registry.update_metadata(ref, int8=record)
    if had_rejected:
        _drop_metadata_key(ref, "int8_rejected")
    return dict(record, path=str(target), out=str(out) if out else None,
                skipped=len(held.skipped) + len(calib.skipped))


def _check_arguments(ref, calibration, check, calibration_count, max_accuracy_drop, out, force) -> None:
    """Every argument, before any work (the float export takes seconds)."""
    if ref.onnx_only:
        raise UsageError(f"{ref.onnx_path}: a standalone .onnx file; --quantize takes a registry model")
    if check is not None and not Path(check).exists():
        raise UsageError(f"--check {check}: folder not found")
    if check is not None and not Path(check).is_dir():
        raise UsageError(f"--check {check}: with --quantize int8, --check takes one folder of class folders "
                         "(a split root: its test/, else val/)")
    if calibration is not None and not Path(calibration).is_dir():
        raise UsageError(f"--calibration {calibration}: folder not found")
    if calibration_count < 1:
        raise UsageError(f"--calibration-images must be at least 1, got {calibration_count}")
    if not np.isfinite(max_accuracy_drop):
        raise UsageError(f"--max-accuracy-drop must be a number of points, got {max_accuracy_drop}")
    if out is not None and Path(out).exists() and not force:
        raise UsageError(f"{out}: file exists (use --force to overwrite)")


def _drop_metadata_key(ref: registry.ModelRef, key: str) -> None:
    with registry.Lock(ref.path.parent.parent):
        meta = registry.read_json(ref.path / registry.METADATA)
        meta.pop(key, None)
        registry.write_json_atomic(ref.path / registry.METADATA, meta)
    ref.metadata = meta


def export_int8(ref: registry.ModelRef, opset: int, check: Optional[Path] = None,
                calibration: Optional[Path] = None, calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
                max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, out: Optional[Path] = None,
                force: bool = False, reporter=None, float_fallback: Optional[float] = None) -> dict:
    """`imgclf export MODEL --quantize int8`: export the float ONNX file first when there is none (or it was
    made with another opset), then quantize it. The float file's parity check uses the --check folder's
    images when one is given."""
    _check_arguments(ref, calibration, check, calibration_count, max_accuracy_drop, out, force)
    if float_fallback is not None:
        Recipe(float_fallback=float_fallback)          # its range, before any work
    images = prepare_images(ref, calibration, check, calibration_count, reporter)  # before the slow part
    float_report = None
    recorded = (ref.metadata.get("onnx") or {}).get("opset")
    if not ref.onnx_path.is_file() or recorded != opset:
        from imgclf.export import export_onnx

        parity = None
        if check is not None:
            from imgclf.data.scan import find_split_dirs

            dirs = find_split_dirs(Path(check))
            parity = _image_files(dirs.get("test") or dirs["val"] if dirs else Path(check))[1][:32] or None
        float_report = export_onnx(ref, opset=opset, check_paths=parity)
        if reporter:
            reporter.info(f"exported {float_report['path']}: parity check on {float_report['checked_images']} "
                          f"{float_report['check_source']}: top-1 agreement {float_report['top1_agreement']:.3f}, "
                          f"max |dp| {float_report['max_abs_diff']:.2e}")
    report = quantize_model(ref, calibration=calibration, check=check, max_accuracy_drop=max_accuracy_drop,
                            calibration_count=calibration_count, out=out, force=force, reporter=reporter,
                            images=images, float_fallback=float_fallback)
    report["float_export"] = float_report
    return report
