"""imgclf/fallback.py: the int8 file's float fallback answers the close calls (top-1 minus top-2 below the
margin) with the float network's probabilities, every other image with the int8 network's, in one ONNX file."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from imgclf import fallback as F  # noqa: E402


def _model(w: np.ndarray):
    """x [N, 2, 2, 1] -> softmax(flatten(x) @ w): a stand-in for the float file (w) and the int8 one (w + noise)."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], name="flatten"),
         helper.make_node("MatMul", ["flat", "w"], ["logits"], name="head"),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1, name="softmax")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 2, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3))
    noisy = w + rng.normal(scale=0.3, size=w.shape)
    x = rng.normal(size=(64, 2, 2, 1)).astype(np.float32)
    return w, noisy, x


def test_close_calls_answered_in_float_the_rest_in_int8(pair):
    w, noisy, x = pair
    p32, p8 = _run(_model(w), x), _run(_model(noisy), x)
    assert np.sum(p32.argmax(1) != p8.argmax(1)) >= 3          # the stand-in int8 file changes labels
    built = F.build(_model(w), _model(noisy), 0.3)
    onnx.checker.check_model(built)
    out = _run(built, x)
    close = F.close_calls(p8, 0.3)
    assert 0 < close.sum() < len(x)
    np.testing.assert_allclose(out[close], p32[close], atol=1e-6)      # the float answer, row for row
    np.testing.assert_allclose(out[~close], p8[~close], atol=1e-6)     # the int8 answer
    np.testing.assert_allclose(out, F.simulate(p32, p8, 0.3), atol=1e-6)
    assert F.margin_of(built) == pytest.approx(0.3) and F.margin_of(_model(w)) is None
    # every label that changed in int8 had a margin below the largest changed one: a margin above it restores all
    changed = p32.argmax(1) != p8.argmax(1)
    top2 = -np.sort(-p8, axis=1)[:, :2]
    wide = float((top2[:, 0] - top2[:, 1])[changed].max()) + 1e-3
    assert np.array_equal(_run(F.build(_model(w), _model(noisy), wide), x).argmax(1), p32.argmax(1))


@pytest.mark.parametrize("rows", [1, 2, 64])
def test_batches_with_none_some_or_all_close(pair, rows):
    w, noisy, x = pair
    x = x[:rows]
    p32, p8 = _run(_model(w), x), _run(_model(noisy), x)
    np.testing.assert_allclose(_run(F.build(_model(w), _model(noisy), 0.0), x), p8, atol=1e-6)   # none close
    np.testing.assert_allclose(_run(F.build(_model(w), _model(noisy), 1.01), x), p32, atol=1e-6)  # all close
    np.testing.assert_allclose(_run(F.build(_model(w), _model(noisy), 0.3), x), F.simulate(p32, p8, 0.3),
                               atol=1e-6)


def test_mismatched_files_are_refused(pair):
    w, noisy, _ = pair
    other = _model(noisy)
    other.graph.output[0].name = "scores"
    other.graph.node[-1].output[0] = "scores"
    with pytest.raises(ValueError, match="other outputs"):
        F.build(_model(w), other, 0.2)
