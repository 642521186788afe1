"""`imgclf export`: Keras model -> ONNX (tf2onnx), with class names and the preprocessing spec in the
ONNX metadata_props, verified against Keras on real images before it is kept.

The ONNX model takes what the Keras model takes: float32 raw pixels (N, H, W, C) in 0..255, resized as
the spec says; the scaling is inside the graph. Conversion goes through `tf2onnx.convert.from_function`
on `model(x, training=False)`: `from_keras` fails on Keras 3 models (KeyError 'keras_tensor_N').
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from imgclf import memory, registry
from imgclf.calibration import apply_temperature, temperature_of
from imgclf.config import EXPORT_OPSET, ONNX_FILE
from imgclf.errors import ExportError, ImageError, UsageError
from imgclf.onnx_meta import metadata_props
from imgclf.preprocessing import PreprocessingSpec, load_image

TOLERANCE = 1e-4
#: a mixed-precision model computes in float16 (about 3 significant digits); its float32 ONNX export is
#: checked against it, the model `predict --backend keras` runs, within this (and against its float32
#: rebuild, the graph that was converted, within TOLERANCE)
MIXED_PRECISION_TOLERANCE = 5e-3


def _float32_model(ref: registry.ModelRef, model):
    """Mixed-precision models are rebuilt in float32 for export (the ONNX model stays float32)."""
    import keras

    if model.dtype_policy.name == "float32" and all(l.dtype_policy.name == "float32" for l in model.layers):
        return model
    from imgclf.architectures import get_architecture
    from imgclf.config import TrainConfig

    cfg = replace(TrainConfig.from_dict(ref.metadata["config"]), weights="none")
    spec = ref.spec
    # the float32 rebuild needs Keras' global dtype policy at float32; it is put back afterwards, so that
    # exporting never changes the policy of the process that called it
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        fresh = get_architecture(ref.metadata["arch"]).build(spec.shape, len(ref.metadata["class_names"]), cfg)
        remembered = ref.metadata.get("memory")
        if remembered:
            fresh = memory.with_memory(fresh, remembered["images"], remembered["width"],
                                       len(ref.metadata["class_names"]), remembered["weight"],
                                       remembered["temperature"])
    finally:
        keras.mixed_precision.set_global_policy(before)
    fresh.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return fresh


def check_images(ref: registry.ModelRef, spec: PreprocessingSpec, paths: Optional[Sequence[str]]):
    """Pixels for the parity check: the given images, else the model's recorded sample images."""
    from imgclf.data.scan import is_image_name, walk_files

    # a folder stands for its image files, recursively (as for `predict`)
    candidates = [f for p in map(str, paths) for f in ([x for x in walk_files(p) if is_image_name(os.path.basename(x))]
                                                       if os.path.isdir(p) else [p])] if paths \
        else list(ref.metadata.get("sample_paths", []))
    arrays, used = [], []
    for p in candidates:
        try:
            arrays.append(load_image(p, spec))
            used.append(p)
        except ImageError:
            continue
    return (np.stack(arrays) if arrays else None), used


def export_onnx(ref: registry.ModelRef, out: Optional[Path] = None, opset: int = EXPORT_OPSET,
                check_paths: Optional[Sequence[str]] = None, force: bool = False) -> dict:
    if ref.onnx_only:
        raise UsageError(f"{ref.onnx_path}: already an ONNX file; export takes a registry model")
    if not (7 <= opset <= 21):
        raise UsageError(f"--opset must be between 7 and 21, got {opset}")
    if out is not None and Path(out).exists() and not force:
        raise UsageError(f"{out}: file exists (use --force to overwrite)")
    from imgclf.tf_quiet import import_keras

    keras = import_keras()
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = ref.spec
    saved = memory.load_keras_model(ref.keras_path)
    model = _float32_model(ref, saved)
    signature = [tf.TensorSpec((None,) + spec.shape, tf.float32, name="image")]
    # the model's temperature goes inside the graph: a deployment without imgclf gets calibrated numbers
    temperature = temperature_of(ref.metadata)
    fn = tf.function(lambda x: {"probabilities": apply_temperature(model(x, training=False), temperature,
                                                                   xp=tf.experimental.numpy)},
                     input_signature=signature)
    try:
        onnx_model, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    except Exception as e:
        raise ExportError(f"{ref.label}: ONNX conversion failed ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None
    del onnx_model.metadata_props[:]
    calibration = dict(ref.metadata.get("calibration") or {"method": "none"}, temperature=temperature, in_graph=True)
    for k, v in metadata_props(ref.metadata, opset=opset, calibration=calibration).items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx_model.producer_name = "imgclf"
    onnx_model.doc_string = (f"imgclf model {ref.label}: input 'image' float32 NHWC raw pixels 0..255, "
                             f"{spec.image_size[0]}x{spec.image_size[1]}x{spec.channels}; output probabilities "
                             f"over class_names (metadata_props), calibrated with temperature {temperature:g}")

    tmp = Path(tempfile.mkdtemp(prefix="imgclf-export-")) / ONNX_FILE
    try:
        onnx.save(onnx_model, str(tmp))
        report = verify(ref, model, tmp, spec, check_paths, temperature, saved=saved)
        targets = [ref.path / registry.ONNX_FILE] + ([Path(out)] if out else [])
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.part")
            shutil.copyfile(tmp, part)
            os.replace(part, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    report.update(path=str(ref.path / registry.ONNX_FILE), out=str(out) if out else None, opset=opset)
    registry.update_metadata(ref, onnx={k: report[k] for k in ("opset", "checked_images", "max_abs_diff",
                                                                "top1_agreement", "check_source", "temperature",
                                                                "max_abs_diff_saved", "saved_tolerance")
                                        if k in report})
    return report


def verify(ref, model, onnx_path: Path, spec: PreprocessingSpec, check_paths=None, temperature: float = 1.0,
           saved=None) -> dict:
    """Run Keras and ONNX on the same images; raise ExportError when top-1 differs or |dp| > TOLERANCE.
    Both sides are calibrated: Keras' output through apply_temperature, the ONNX graph holds T itself.
    `model` is the graph that was converted; `saved`, when it is another one (a mixed-precision model), the
    model as saved, checked too (within MIXED_PRECISION_TOLERANCE; top-1 may differ only on near-ties)."""
    import onnxruntime as ort

    pixels, used = check_images(ref, spec, check_paths)
    source = "images"
    if pixels is None:
        if check_paths:
            raise ExportError("none of the --check images could be read")
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, size=(8,) + spec.shape, dtype=np.uint8)
        source = "random pixels (the training images were not found)"
    x = pixels.astype(np.float32)
    keras_p = apply_temperature(np.asarray(model(x, training=False), dtype=np.float32), temperature)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_p = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    diff = float(np.max(np.abs(keras_p - onnx_p)))
    agree = float(np.mean(keras_p.argmax(1) == onnx_p.argmax(1)))
    report = {"checked_images": int(len(x)), "max_abs_diff": diff, "top1_agreement": agree, "check_source": source,
              "temperature": temperature}
    if agree < 1.0 or diff > TOLERANCE:
        raise ExportError(f"{ref.label}: ONNX disagrees with Keras on {len(x)} {source} (top-1 agreement "
                          f"{agree:.3f}, max |dp| {diff:.2e} > {TOLERANCE:g}); not saved")
    if saved is not None and saved is not model:
        saved_p = apply_temperature(np.asarray(saved(x, training=False), dtype=np.float32), temperature)
        saved_diff = float(np.max(np.abs(saved_p - onnx_p)))
        report.update(max_abs_diff_saved=saved_diff, saved_tolerance=MIXED_PRECISION_TOLERANCE)
        if saved_diff > MIXED_PRECISION_TOLERANCE:
            raise ExportError(f"{ref.label}: ONNX disagrees with the saved model on {len(x)} "
                              f"{source} (max |dp| {saved_diff:.2e} > {MIXED_PRECISION_TOLERANCE:g}); not saved")
    return report
