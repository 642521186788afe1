"""Activation equalization before int8 (quantize.Recipe.equalize): each channel of a residual stream is
scaled up towards the stream's full range, and the convolutions that read it are scaled down by the same
factor, so the float network computes exactly the same thing while small channels get more of the 256
uint8 steps.

onnxruntime gives every activation one scale for all its channels. In MobileNetV2 a channel's range is
often a fifth of its tensor's or less (docs/benchmarks.md): that channel is then read in ~50 steps instead of
256. A residual stream (the outputs of the linear projection convolutions and of the Adds that join them,
up to the convolutions that read them) has nothing but linear operations in it, so scaling its channel c by
s_c in every convolution that writes it (weights and bias) and dividing channel c of every reader's weights
by s_c changes no output: a cross-layer rescaling as in Nagel et al. 2019 ("Data-Free Quantization Through
Weight Equalization and Bias Correction", 4.1), driven by the activation ranges measured on calibration
images. s_c = (range of the stream / range of channel c) ** strength, at most MAX_SCALE. Weights are int8
per output channel, so a writer's larger rows cost nothing; a reader's smaller columns lose a little weight
precision, hence the cap. The ReLU6 outputs are left alone: scaling them moves the clip at 6, and channels
that were quiet on calibration images then clip on others (tried: labels of the float network changed).

Needs onnx and onnxruntime only.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

#: the largest factor a channel is scaled up by
MAX_SCALE = 16.0
#: calibration images the ranges are measured on
EQUALIZE_IMAGES = 300


def _groups(graph) -> Tuple[List[dict], Dict[str, object]]:
    """The residual streams of `graph` that can be equalized: [{"tensors", "writers", "readers"}], each
    written only by convolutions and the Adds between its tensors, and read only by convolutions."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: Dict[str, list] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    outputs = {o.name for o in graph.output}

    def is_conv(n):
        return n.op_type == "Conv" and n.input[1] in inits and (len(n.input) < 3 or n.input[2] in inits)

    def reads_as_data(n, t):
        return is_conv(n) and n.input[0] == t and _group(n) in (1, _channels(n, inits))

    # residual streams: union of linear conv outputs and Adds of two data tensors
    parent: Dict[str, str] = {}

    def find(t):
        while parent.setdefault(t, t) != t:
            t = parent[t]
        return t

    adds = [n for n in graph.node if n.op_type == "Add" and len(n.input) == 2 and all(i not in inits for i in n.input)]
    for n in adds:
        for t in (n.input[0], n.input[1]):
            parent[find(t)] = find(n.output[0])
    members: Dict[str, set] = {}
    for t in list(parent):
        members.setdefault(find(t), set()).add(t)
    linear = [n.output[0] for n in graph.node if is_conv(n)
              and all(c.op_type in ("Conv", "Add") for c in consumers.get(n.output[0], []))]
    for t in linear:
        if t not in parent:
            members.setdefault(t, {t})
    groups = []
    add_names = {n.name for n in adds}
    for tensors in members.values():
        writers, readers, ok = [], [], True
        for t in tensors:
            p = producer.get(t)
            if t in outputs or p is None:
                ok = False
                break
            if p.op_type == "Add" and p.name in add_names and all(i in tensors for i in p.input):
                pass
            elif is_conv(p):
                writers.append(p)
            else:
                ok = False
                break
            for c in consumers.get(t, []):
                if c.op_type == "Add" and c.output[0] in tensors:
                    continue
                if not reads_as_data(c, t):
                    ok = False
                    break
                readers.append(c)
        if ok and writers and readers:
            groups.append({"tensors": sorted(tensors), "writers": writers, "readers": readers})
    return groups, inits


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _channels(node, inits) -> int:
    return int(inits[node.input[1]].dims[0])


def _ranges(model, tensors: Sequence[str], pixels: np.ndarray, batch: int = 16) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{tensor: (min, max) per channel} of NCHW `tensors` of `model` over `pixels`."""
    import onnx

    from imgclf.onnx_meta import cpu_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in have)
    sess = cpu_session(probe.SerializeToString())
    name = sess.get_inputs()[0].name
    out: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for i in range(0, len(pixels), batch):
        for t, v in zip(tensors, sess.run(list(tensors), {name: pixels[i:i + batch].astype(np.float32)})):
            lo, hi = v.min(axis=(0, 2, 3)), v.max(axis=(0, 2, 3))
            out[t] = (lo, hi) if t not in out else (np.minimum(out[t][0], lo), np.maximum(out[t][1], hi))
    return out


def equalize(model, pixels: np.ndarray, strength: float = 1.0) -> int:
    """Equalize `model` (a prepared float ONNX ModelProto) in place on calibration `pixels`; returns how many
    residual streams were rescaled. The float network's outputs are unchanged (up to float rounding)."""
    from onnx import numpy_helper

    groups, inits = _groups(model.graph)
    if not groups:
        return 0
    ranges = _ranges(model, sorted({t for g in groups for t in g["tensors"]}), pixels[:EQUALIZE_IMAGES])
    arrays, dtypes = {}, {}

    def array(name):
        if name not in arrays:
            original = numpy_helper.to_array(inits[name])
            arrays[name], dtypes[name] = original.astype(np.float32), original.dtype
        return arrays[name]

    # a weight shared by two convolutions cannot take two scalings: such groups are left alone
    uses: Dict[str, int] = {}
    for n in model.graph.node:
        for x in n.input[1:]:
            uses[x] = uses.get(x, 0) + 1
    done = 0
    for g in groups:
        span = [np.maximum(ranges[t][1], 0) - np.minimum(ranges[t][0], 0) for t in g["tensors"]]
        channel = np.max(span, axis=0)
        scale = np.clip((channel.max() / np.maximum(channel, 1e-12)) ** strength, 1.0, MAX_SCALE)
        nodes = g["writers"] + g["readers"]
        if np.all(scale == 1.0) or any(uses.get(x, 0) > 1 for n in nodes for x in n.input[1:]):
            continue
        for w in g["writers"]:
            array(w.input[1])[...] *= scale.reshape(-1, 1, 1, 1)
            if len(w.input) > 2:
                array(w.input[2])[...] *= scale
        for r in g["readers"]:
            if _group(r) > 1:                       # depthwise: channel c in, channel c out
                array(r.input[1])[...] /= scale.reshape(-1, 1, 1, 1)
            else:
                array(r.input[1])[...] /= scale.reshape(1, -1, 1, 1)
        done += 1
    for name, value in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtypes[name]), name))
    return done
