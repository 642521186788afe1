"""imgclf/equalize.py (quantize.Recipe.equalize): a residual stream's small channels are scaled up to its full
range and the convolutions reading them scaled down, so the float network's output is unchanged and int8,
which gives the stream one scale for all channels, reads the small channels in finer steps."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from imgclf import equalize as E  # noqa: E402
from imgclf import quantize as Q  # noqa: E402

#: the stream's channel sizes: channels 1 and 2 use a tenth and a fifth of the range of channels 0 and 3
SIZES = np.array([1.0, 0.1, 0.2, 1.0], np.float32)


def _net(read_by_conv: bool = True):
    """x [N, 3, 6, 6] -> A (1x1 conv) -> t1 -> B (1x1) -> Clip(0, 6) -> C (1x1) -> t2; t3 = t1 + t2 (the stream:
    t1, t2, t3, written by A and C) -> D (1x1 conv, which reads the small channels) -> y; or t3 pooled."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 1, 1)).astype(np.float32) * SIZES.reshape(-1, 1, 1, 1)
    c = rng.normal(size=(4, 8, 1, 1)).astype(np.float32) * 0.2 * SIZES.reshape(-1, 1, 1, 1)
    d = np.array([[0, 10, 0, 0], [0, 0, 5, 0]], np.float32).reshape(2, 4, 1, 1)
    inits = [numpy_helper.from_array(a, "a"), numpy_helper.from_array(np.zeros(4, np.float32) + 0.01 * SIZES, "a_b"),
             numpy_helper.from_array(rng.normal(size=(8, 4, 1, 1)).astype(np.float32), "b"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b_b"),
             numpy_helper.from_array(c, "c"), numpy_helper.from_array(np.zeros(4, np.float32), "c_b"),
             numpy_helper.from_array(d, "d"), numpy_helper.from_array(np.zeros(2, np.float32), "d_b"),
             numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(np.array(6, np.float32), "six")]
    nodes = [helper.make_node("Conv", ["x", "a", "a_b"], ["t1"], name="A"),
             helper.make_node("Conv", ["t1", "b", "b_b"], ["u"], name="B"),
             helper.make_node("Clip", ["u", "zero", "six"], ["u6"], name="relu6"),
             helper.make_node("Conv", ["u6", "c", "c_b"], ["t2"], name="C"),
             helper.make_node("Add", ["t1", "t2"], ["t3"], name="add")]
    if read_by_conv:
        nodes.append(helper.make_node("Conv", ["t3", "d", "d_b"], ["y"], name="D"))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, 6, 6])
    else:
        nodes.append(helper.make_node("GlobalAveragePool", ["t3"], ["y"], name="pool"))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 1, 1])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 6, 6])],
                              [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _pixels(n=64, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 3, 6, 6)).astype(np.float32)


def _channel_ranges(model, x, tensor="t3"):
    return E._ranges(model, [tensor], x)[tensor][1] - E._ranges(model, [tensor], x)[tensor][0]


def test_stream_equalized_float_output_unchanged(tmp_path):
    model, x = _net(), _pixels()
    groups, _ = E._groups(model.graph)
    assert len(groups) == 1
    assert groups[0]["tensors"] == ["t1", "t2", "t3"]
    assert sorted(n.name for n in groups[0]["writers"]) == ["A", "C"]
    assert sorted(n.name for n in groups[0]["readers"]) == ["B", "D"]
    before = _channel_ranges(model, x)
    assert before.min() / before.max() < 0.3
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    assert E.equalize(model, x, 1.0) == 1
    onnx.save(model, str(tmp_path / "eq.onnx"))
    after = _channel_ranges(model, x)
    # every channel now spans most of the stream's range (the factor is set by the widest of t1, t2, t3)
    assert after.min() / after.max() > 0.6, after
    held = _pixels(seed=2)                                  # images it never saw: still the same network
    np.testing.assert_allclose(Q._probabilities(tmp_path / "eq.onnx", held),
                               Q._probabilities(tmp_path / "fp32.onnx", held), rtol=1e-4, atol=1e-5)


def test_equalized_int8_reads_small_channels_in_finer_steps(tmp_path):
    onnx.save(_net(), str(tmp_path / "fp32.onnx"))
    x, held = _pixels(), _pixels(seed=2)
    want = Q._probabilities(tmp_path / "fp32.onnx", held)
    errors = {}
    for strength in (0.0, 1.0):
        out = tmp_path / f"int8-{strength}.onnx"
        info = Q.quantize_file(tmp_path / "fp32.onnx", out, x, Q.Recipe(equalize=strength))
        assert info["equalize"] == strength and info["equalized_streams"] == (1 if strength else 0)
        errors[strength] = float(np.abs(Q._probabilities(out, held) - want).mean())
    assert errors[1.0] < 0.5 * errors[0.0], errors


def test_stream_read_by_a_pool_is_left_alone():
    model, x = _net(read_by_conv=False), _pixels()
    weights = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    assert E._groups(model.graph)[0] == []
    assert E.equalize(model, x, 1.0) == 0
    for i in model.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(i), weights[i.name])
