"""The imgclf metadata inside an exported .onnx file (metadata_props): written by export, read by the
registry (a standalone .onnx given as MODEL) and by predict; and the quiet onnxruntime CPU session that
quantize and equalize run ONNX files with. Needs only the `onnx` package (and `onnxruntime` for a session).
"""
from __future__ import annotations

import json

from imgclf.errors import UsageError
from imgclf.preprocessing import COLOR_ORDER, INPUT_LAYOUT

METADATA_KEY = "imgclf"
#: the model metadata.json fields an export carries
EXPORTED_FIELDS = ("name", "version", "created", "arch", "class_names", "preprocessing", "image_size", "channels")


def metadata_props(model_metadata: dict, **extra) -> dict:
    """key -> string for an ONNX file's metadata_props: everything under "imgclf" (JSON), and the fields
    a deployment reads most on their own (class_names, preprocessing, image_size, channels, input layout)."""
    meta = {k: model_metadata.get(k) for k in EXPORTED_FIELDS}
    meta.update(extra)
    return {METADATA_KEY: json.dumps(meta), "class_names": json.dumps(meta["class_names"]),
            "preprocessing": json.dumps(meta["preprocessing"]), "image_size": json.dumps(meta["image_size"]),
            "channels": str(meta["channels"]), "input_layout": INPUT_LAYOUT, "color_order": COLOR_ORDER}


def read_onnx_metadata(path) -> dict:
    """The imgclf metadata of an exported .onnx file (class names, preprocessing, ...)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UsageError(f"{path}: not a readable ONNX file ({e})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise UsageError(f"{path}: ONNX file has no imgclf metadata (class names, preprocessing)")
    return json.loads(props[METADATA_KEY])


def cpu_session(model):
    """A quiet onnxruntime CPU session of `model` (a path or serialized bytes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])
