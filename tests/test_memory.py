"""The nearest-neighbour memory (issue 14, imgclf/memory.py): a pretrained model stores its training images'
features and blends a vote of the most similar ones with its head's answer, in the .keras file, the ONNX
export and the int8 file alike."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_onnx_matches_keras, cli, error_line, image_files, make_tree, write_small_backbone


def _vote(features, embeddings, onehot, temperature):
    """The vote by its definition: softmax over the stored images of cosine similarity / T, summed per class."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    s = f @ embeddings.T / temperature
    w = np.exp(s - s.max(axis=1, keepdims=True))
    return (w @ onehot) / w.sum(axis=1, keepdims=True)


def test_vote_follows_the_most_similar_stored_image():
    from imgclf.memory import vote_layer_class

    e = np.eye(3, dtype=np.float32)
    refs = np.stack([e[0], e[1], e[2], (e[0] + e[1]) / np.sqrt(2)]).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    queries = np.array([[5, 0, 0], [1, 0, 0.1], [1, 1, 0], [1, 0.9, 0]], dtype=np.float32)
    for temperature in (0.02, 1.0):
        layer = vote_layer_class()(4, 3, 3, temperature)
        layer.build((None, 3))
        layer.set_weights([refs, onehot])
        got = np.asarray(layer(queries))
        np.testing.assert_allclose(got, _vote(queries, refs, onehot, temperature), atol=1e-5)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    sharp = vote_layer_class()(4, 3, 3, 0.02)
    sharp.build((None, 3))
    sharp.set_weights([refs, onehot])
    # the length of the features does not count, only their direction; the closest stored image decides
    assert np.asarray(sharp(queries)).argmax(axis=1).tolist() == [0, 0, 1, 1]
    assert np.asarray(sharp(queries))[0, 0] > 0.999 and np.asarray(layer(queries))[0, 0] < 0.6


@pytest.fixture(scope="module")
def colour_tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("mem") / "colours", {"red": 8, "green": 8, "blue": 8},
                     mode="RGB", size=(24, 24), seed=3)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A backbone weights file written from a random-init MobileNetV2 (alpha 0.35, no top)."""
    path = tmp_path_factory.mktemp("w") / "backbone.weights.h5"
    write_small_backbone(path, seed=7)
    return path


def _train(data, backbone, registry, name, *extra):
    return cli("train", data, "--weights", backbone, "--alpha", "0.35", "--image-size", "96", "--epochs", "1",
               "--fine-tune-epochs", "0", "--batch-size", "8", "--patience", "0", "--registry", registry,
               "--name", name, *extra)


def test_pretrained_default_remembers_the_training_images_in_keras_onnx_and_int8(tmp_path, colour_tree,
                                                                                   backbone_file):
    import keras

    from imgclf.memory import load_keras_model

    reg = tmp_path / "reg"
    r = _train(colour_tree, backbone_file, reg, "m")
    assert r.exit_code == 0, r.output
    meta = json.loads((reg / "m" / "1" / "metadata.json").read_text())
    n_train = meta["dataset"]["train"]["images"]
    assert meta["config"]["memory"] == 0.5
    assert meta["memory"] == {"weight": 0.5, "temperature": 0.02, "images": n_train, "width": 1280,
                              "bytes": n_train * 1280 * 4}
    assert f"nearest-neighbour memory: {n_train} training images x 1,280 features" in r.stderr

    # the saved model's output is 0.5 x the head + 0.5 x the vote over the stored training features
    model = load_keras_model(reg / "m" / "1" / "model.keras")
    embeddings, onehot = model.get_layer("memory").get_weights()
    assert embeddings.shape == (n_train, 1280) and onehot.sum(axis=0).tolist() == \
        [meta["dataset"]["train"]["per_class"][c] for c in meta["class_names"]]
    from imgclf.preprocessing import PreprocessingSpec, load_image
    spec = PreprocessingSpec.from_dict(meta["preprocessing"])
    x = np.stack([load_image(p, spec) for p in image_files(colour_tree)[:6]]).astype(np.float32)
    head = keras.Model(model.input, model.get_layer("probabilities").output)(x)
    features = keras.Model(model.input, model.get_layer("gap").output)(x)
    expected = 0.5 * np.asarray(head) + 0.5 * _vote(np.asarray(features), embeddings, onehot, 0.02)
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-5)

    # the ONNX export holds the memory (parity with Keras), and int8 keeps the memory's arithmetic float
    r = cli("export", "m", "--registry", reg, "--quantize", "int8", "--force")
    assert r.exit_code == 0, r.output
    assert_onnx_matches_keras(reg / "m" / "1", image_files(colour_tree), atol=1e-4)
    import onnx
    graph = onnx.load(str(reg / "m" / "1" / "model.int8.onnx")).graph
    memory_matmuls = [n for n in graph.node if n.op_type == "MatMul" and "/memory" in n.name]
    assert len(memory_matmuls) == 2, [n.name for n in graph.node]
    dequantize = {o: n for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    initializers = {i.name: i for i in graph.initializer}
    for n in memory_matmuls:
        # what flows in stays float (the features, the votes); the stored matrix is int8, one scale per column
        assert n.input[0] not in dequantize, f"{n.name}: its input is quantized"
        stored = dequantize[n.input[1]]
        assert initializers[stored.input[0]].data_type == onnx.TensorProto.INT8
        assert list(initializers[stored.input[1]].dims) == [initializers[stored.input[0]].dims[1]]
    # the pretrained recipe keeps the pooled features and the head after them float too (issue 34)
    assert not any("/probabilities" in n.name and i in dequantize for n in graph.node
                   if n.op_type in ("MatMul", "Gemm") for i in n.input), "the head should be float"
    meta = json.loads((reg / "m" / "1" / "metadata.json").read_text())
    assert "Exp" in meta["int8"]["float_ops"] and meta["int8"]["memory"].startswith("stored features int8")
    card = cli("models", "card", "m", "--registry", reg, "--out", "-")
    assert card.exit_code == 0, card.output
    assert (f"| nearest-neighbour memory | `{n_train} training images x 1280 features, weight 0.5, temperature "
            "0.02` |") in card.stdout


def test_memory_alone_knows_every_training_image(tmp_path, colour_tree, backbone_file):
    """A head that learnt nothing (learning rate 1e-9) gets about a third of the training images right;
    with --memory 1 the answer is the vote alone, and each training image is its own closest match, so
    the same run gets every one of them right. --memory 0 adds no memory to the model."""
    reg = tmp_path / "reg"
    accuracy = {}
    for name, weight in (("all", "1"), ("none", "0")):
        assert _train(colour_tree, backbone_file, reg, name, "--memory", weight, "--lr", "1e-9").exit_code == 0
        r = cli("evaluate", name, colour_tree, "--registry", reg, "--out", tmp_path / name, "--format", "json")
        assert r.exit_code == 0, r.output
        accuracy[name] = json.loads(r.stdout)["accuracy"]
    assert accuracy["all"] == 1.0 and accuracy["none"] < 0.8, accuracy
    meta = json.loads((reg / "none" / "1" / "metadata.json").read_text())
    assert "memory" not in meta and meta["config"]["memory"] == 0.0
    from imgclf.memory import load_keras_model
    assert "memory" not in [layer.name for layer in load_keras_model(reg / "none" / "1" / "model.keras").layers]


def test_memory_values_and_models_without_features_are_refused(tmp_path, colour_tree):
    reg = tmp_path / "reg"
    r = cli("train", colour_tree, "--memory", "1.5", "--registry", reg)
    assert r.exit_code == 2 and error_line(r) == "error: --memory must be between 0.0 and 1.0, got 1.5"
    r = cli("train", colour_tree, "--arch", "mlp", "--memory", "0.5", "--registry", reg)
    assert r.exit_code == 2
    assert error_line(r) == ("error: --memory 0.5: mlp at 24 px has no pooled features to remember (the "
                             "MobileNets have them, and the cnn from 64 px); use --memory 0")
    assert not list(reg.glob("*/[0-9]*")), "no model may be saved"


def test_default_memory_is_off_above_the_size_limit(tmp_path, colour_tree, backbone_file, monkeypatch):
    from imgclf import config, train

    monkeypatch.setattr(config, "MEMORY_MAX_IMAGES", 10)
    monkeypatch.setattr(train, "MEMORY_MAX_IMAGES", 10)
    reg = tmp_path / "reg"
    r = _train(colour_tree, backbone_file, reg, "big")
    assert r.exit_code == 0, r.output
    assert "nearest-neighbour memory off: 21 training images, over 10 (pass --memory 0.5 to keep it)" in r.stderr
    meta = json.loads((reg / "big" / "1" / "metadata.json").read_text())
    assert "memory" not in meta and meta["config"]["memory"] == 0.0


def test_memory_defaults_by_how_the_network_starts():
    """On by default for a pretrained network up to MEMORY_MAX_IMAGES training images, never from scratch
    (the cnn's Fashion-MNIST figures are untouched), and a given value always wins."""
    from imgclf.config import MEMORY_MAX_IMAGES, TrainConfig, resolve

    def resolved(pretrained, n_train, **given):
        return resolve(TrainConfig(**given), pretrained, n_train=n_train).memory

    assert resolved(True, 1_716) == 0.5 and resolved(True, MEMORY_MAX_IMAGES) == 0.5
    assert resolved(True, MEMORY_MAX_IMAGES + 1) == 0.0 and resolved(True, 50_000, memory=0.5) == 0.5
    assert resolved(False, 480) == 0.0 and resolved(False, 54_000) == 0.0 and resolved(False, 480, memory=1.0) == 1.0
