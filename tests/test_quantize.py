"""`imgclf export --quantize int8`: an int8 ONNX file that agrees with the float one on held-out images,
refused when it does not; `imgclf predict --precision int8`; `imgclf models show` lists the files."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, error_line, make_tree

#: a pretrained MobileNetV2 backbone (../shared/data/pretrained_backbone.py OUT.weights.h5) when one is at
#: hand; else the mobilenet_v2 model starts from random weights (--weights none)
BACKBONE = os.environ.get("IMGCLF_TEST_BACKBONE", "/tmp/mnv2bb/mnv2.weights.h5")


def _files(version: Path):
    return sorted(p.name for p in version.iterdir())


@pytest.fixture(scope="module")
def split_colours(tmp_path_factory) -> Path:
    """Three colour classes, 40 RGB images each, split 60/15/25: 30 held-out test images."""
    src = make_tree(tmp_path_factory.mktemp("q-colours") / "colours", {"blue": 40, "green": 40, "red": 40},
                    mode="RGB", size=(24, 24), seed=7)
    dest = src.parent / "colours-split"
    r = cli("split", src, dest, "--val", 0.15, "--test", 0.25, "--seed", 3, "-q")
    assert r.exit_code == 0, r.output
    return dest


def _train(registry: Path, data: Path, name: str, *args) -> Path:
    r = cli("train", data, "--registry", registry, "--name", name, "--patience", 0, "--format", "json", "-q",
            *args)
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout)["path"])


@pytest.fixture(scope="module")
def cnn(tmp_path_factory, split_colours):
    """The default architecture (cnn), 16 px, not yet exported: --quantize must export it first."""
    registry = tmp_path_factory.mktemp("q-registry")
    # 4 epochs: 3 reached 0.667 on seed 42 (1.0 on seeds 1 and 2) once the train set became one repeating
    # dataset (a different seeded order); the int8 checks need a model that has learnt the colours
    path = _train(registry, split_colours, "cnn", "--epochs", 4, "--image-size", 16, "--batch-size", 8)
    return registry, path


@pytest.fixture(scope="module")
def quantized_cnn(tmp_path_factory, cnn):
    """The cnn quantized, in a registry of its own (the tests that copy `cnn` get it unexported)."""
    registry = tmp_path_factory.mktemp("q-quantized") / "registry"
    shutil.copytree(cnn[0], registry)
    path = registry / "cnn" / "1"
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8")
    assert r.exit_code == 0, r.output
    return registry, path, r


def _copy(registry: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "registry"
    shutil.copytree(registry, dest)
    return dest


def _labels(registry, model, folder, precision):
    r = cli("predict", folder, "--registry", registry, "-m", model, "--precision", precision, "--format", "json")
    assert r.exit_code == 0, r.output
    return {row["path"]: (row["label"], row["confidence"]) for row in json.loads(r.stdout)}


def test_cnn_int8_export_agrees_with_float(quantized_cnn, split_colours):
    import onnx

    registry, path, r = quantized_cnn
    assert r.stdout.strip() == str(path / "model.int8.onnx")
    assert {"model.onnx", "model.int8.onnx", "int8_changed_labels.csv"} <= set(_files(path))
    assert not [f for f in _files(path) if f.endswith(".part")]
    meta = json.loads((path / "metadata.json").read_text())
    check = meta["int8"]["check"]
    assert check["images"] == 30 and check["source"] == str(split_colours / "test")
    assert check["fp32_accuracy"] >= 0.9, check       # a model that has learnt the colours
    assert check["top1_agreement"] >= 0.99, check
    assert check["int8_accuracy"] >= check["fp32_accuracy"] - 0.01, check
    assert check["passed"] is True and check["max_accuracy_drop"] == 1.0
    assert 0 < check["max_abs_diff"] < 0.2
    # calibrated on the model's own training split (72 images: all of them, fewer than the default 300)
    assert meta["int8"]["calibration_source"] == str(split_colours / "train")
    assert meta["int8"]["calibration_images"] == 72
    assert meta["int8"]["per_channel"] is True and meta["int8"]["format"] == "QDQ"
    assert "onnx" in meta and meta["onnx"]["top1_agreement"] == 1.0      # the float file was exported first
    assert "model.onnx: parity check on" in r.stderr and "int8 check on 30 held-out images" in r.stderr

    # the same metadata_props as the float file, plus the quantization settings
    fp32 = {p.key: p.value for p in onnx.load(str(path / "model.onnx")).metadata_props}
    int8 = {p.key: p.value for p in onnx.load(str(path / "model.int8.onnx")).metadata_props}
    for key in ("class_names", "preprocessing", "image_size", "channels"):
        assert int8[key] == fp32[key]
    settings = json.loads(int8["quantization"])
    assert settings["per_channel"] is True and settings["calibration_images"] == 72
    assert settings["method"] == "static" and settings["format"] == "QDQ"
    assert json.loads(int8["imgclf"])["quantization"] == settings
    assert {k: v for k, v in json.loads(int8["imgclf"]).items() if k != "quantization"} == \
        json.loads(fp32["imgclf"])
    # really int8: quantized weights, QDQ pairs, no ConvInteger (the CPU provider cannot run it)
    graph = onnx.load(str(path / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "ConvInteger" not in ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)

    # the CSV names exactly the images whose label changed, and predict shows the same
    with open(path / "int8_changed_labels.csv", newline="") as f:
        changed = list(csv.DictReader(f))
    assert len(changed) == check["changed_labels"]
    fp = _labels(registry, "cnn", split_colours / "test", "fp32")
    q = _labels(registry, "cnn", split_colours / "test", "int8")
    assert len(fp) == 30 and fp.keys() == q.keys()
    assert {p for p in fp if fp[p][0] != q[p][0]} == {row["path"] for row in changed}
    assert any(fp[p][1] != q[p][1] for p in fp)    # int8 ran: the probabilities are not the float ones


def test_models_show_lists_every_file_with_its_size(quantized_cnn):
    registry, path, _ = quantized_cnn
    r = cli("models", "show", "cnn", "--registry", registry)
    assert r.exit_code == 0, r.output
    files = {f["file"]: f for f in json.loads(r.stdout)["files"]}
    assert list(files) == ["model.keras", "model.onnx", "model.int8.onnx"]
    for name, f in files.items():
        assert f["bytes"] == (path / name).stat().st_size and f["path"] == str(path / name)
    assert files["model.int8.onnx"]["bytes"] < files["model.onnx"]["bytes"] / 2
    assert files["model.onnx"]["size"].endswith(("KiB", "MiB"))
    # the model card lists the int8 file with its check
    check = json.loads((path / "metadata.json").read_text())["int8"]["check"]
    r = cli("models", "card", "cnn", "--registry", registry, "--out", "-")
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if "`model.int8.onnx`" in line)
    assert "int8 ONNX export" in row and f"held-out images: accuracy {check['fp32_accuracy']:.4f} -> " in row


def test_check_failure_saves_no_int8_file(cnn, tmp_path):
    registry = _copy(cnn[0], tmp_path)
    version = registry / "cnn" / "1"
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8", "--max-accuracy-drop", -1,
            "--out", tmp_path / "deploy.int8.onnx")
    assert r.exit_code == 1
    line = error_line(r)
    assert "cnn:1: int8 accuracy" in line and "> --max-accuracy-drop -1" in line
    assert "model.int8.onnx not saved" in line
    assert not (version / "model.int8.onnx").exists() and not (tmp_path / "deploy.int8.onnx").exists()
    assert not [f for f in _files(version) if f.startswith(".")]
    assert r.stdout == ""
    meta = json.loads((version / "metadata.json").read_text())
    assert "int8" not in meta and meta["int8_rejected"]["check"]["passed"] is False
    # predict --precision int8 then says there is none, in one line
    r = cli("predict", tmp_path, "--registry", registry, "-m", "cnn", "--precision", "int8")
    assert r.exit_code == 2
    line = error_line(r)
    assert "model cnn:1 has no int8 export (model.int8.onnx)" in line and "--quantize int8" in line

    # --force keeps it, says so, and records the failed check
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8", "--max-accuracy-drop", -1, "--force")
    assert r.exit_code == 0, r.output
    assert "failed the agreement check and was kept because of --force" in r.stderr
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["int8"]["check"]["passed"] is False and "int8_rejected" not in meta
    assert (version / "model.int8.onnx").is_file()


def test_check_set_where_int8_must_fail(quantized_cnn, tmp_path):
    """A check set the float model gets right and the int8 one gets wrong, by construction: of thousands of
    random colours, those on which the two files disagree, filed under the float file's label."""
    import onnxruntime as ort
    from PIL import Image

    src, path, _ = quantized_cnn
    registry = _copy(src, tmp_path)
    names = json.loads((path / "metadata.json").read_text())["class_names"]
    rng = np.random.default_rng(0)
    x = np.clip(rng.integers(0, 256, (4000, 1, 1, 3)) + rng.normal(0, 20, (4000, 16, 16, 3)), 0, 255)
    x = x.astype(np.uint8)
    labels = {}
    for precision in ("fp32", "int8"):
        sess = ort.InferenceSession(str(path / ("model.onnx" if precision == "fp32" else "model.int8.onnx")),
                                    providers=["CPUExecutionProvider"])
        labels[precision] = sess.run(None, {"image": x.astype(np.float32)})[0].argmax(1)
    disagree = np.flatnonzero(labels["fp32"] != labels["int8"])
    assert len(disagree) > 0
    check = tmp_path / "check"
    for name in names:
        (check / name).mkdir(parents=True)
    for i in disagree:
        Image.fromarray(x[i]).save(check / names[labels["fp32"][i]] / f"{i}.png")

    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8", "--check", check)
    assert r.exit_code == 1, r.output
    line = error_line(r)
    assert f"int8 accuracy 0.0000 vs fp32 1.0000 on {len(disagree)} held-out images of {check}" in line
    assert "model.int8.onnx not saved" in line and "the earlier model.int8.onnx is kept" in line
    version = registry / "cnn" / "1"
    assert (version / "model.int8.onnx").read_bytes() == (path / "model.int8.onnx").read_bytes()
    rejected = json.loads((version / "metadata.json").read_text())["int8_rejected"]
    assert rejected["check"]["changed_labels"] == len(disagree) and rejected["check"]["top1_agreement"] == 0
    with open(version / "int8_changed_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r_["path"] for r_ in rows) == sorted(str(p) for p in check.rglob("*.png"))
    assert all(r_["true"] == r_["fp32_label"] != r_["int8_label"] for r_ in rows)


def test_calibration_and_check_folders(cnn, tmp_path, split_colours):
    registry = _copy(cnn[0], tmp_path)
    check = tmp_path / "check"
    shutil.copytree(split_colours / "val", check)
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8", "--calibration", split_colours,
            "--calibration-images", 10, "--check", check, "-q")
    assert r.exit_code == 0, r.output
    int8 = json.loads((registry / "cnn" / "1" / "metadata.json").read_text())["int8"]
    # a split root calibrates on its train/ only
    assert int8["calibration_source"] == str(split_colours / "train") and int8["calibration_images"] == 10
    assert int8["check"]["source"] == str(check)
    assert int8["check"]["images"] == sum(1 for _ in check.rglob("*.png"))


@pytest.mark.parametrize("args, message", [
    (["--calibration", "{tmp}/nowhere"], "--calibration {tmp}/nowhere: folder not found"),
    (["--check", "{tmp}/nowhere"], "--check {tmp}/nowhere: folder not found"),
    (["--check", "{tmp}/registry/cnn/1/model.keras"], "--check {tmp}/registry/cnn/1/model.keras: with --quantize "
                                                      "int8, --check takes one folder of class folders (a split "
                                                      "root: its test/, else val/)"),
    (["--check", "{tmp}", "--check", "{tmp}"], "--check: with --quantize int8, give one folder of class folders"),
    (["--max-accuracy-drop", "nan"], "--max-accuracy-drop must be a number of points, got nan"),
    (["--calibration-images", "0"], "--calibration-images must be at least 1, got 0"),
    (["--float-fallback", "1.5"], "--float-fallback must be a probability margin from 0 to 1, got 1.5"),
    (["--quantize", "int4"], None),
])
def test_bad_arguments(cnn, tmp_path, args, message):
    registry = _copy(cnn[0], tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = cli("export", "cnn", "--registry", registry, *(["--quantize", "int8"] if "--quantize" not in args else []),
            *args)
    assert r.exit_code == 2
    if message:
        assert error_line(r) == "error: " + message.replace("{tmp}", str(tmp_path))
    else:
        assert "int4" in r.output and "int8" in r.output
    assert not (registry / "cnn" / "1" / "model.int8.onnx").exists()


def test_float_fallback_needs_quantize(cnn, tmp_path):
    registry = _copy(cnn[0], tmp_path)
    r = cli("export", "cnn", "--registry", registry, "--float-fallback", 0.2)
    assert r.exit_code == 2 and error_line(r) == "error: --float-fallback: only with --quantize int8"
    assert not (registry / "cnn" / "1" / "model.onnx").exists()


def test_training_data_gone(cnn, tmp_path, split_colours):
    """Without the training data (recorded in metadata.json) the user is told to pass the folders."""
    registry = _copy(cnn[0], tmp_path)
    meta_path = registry / "cnn" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["dataset"]["source"] = str(tmp_path / "moved-away")
    meta_path.write_text(json.dumps(meta))
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8")
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {tmp_path / 'moved-away'}: the training data of cnn:1 (recorded in "
                             "metadata.json) is not found; pass --calibration DIR and --check DIR")
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8", "--check", split_colours, "-q")
    assert r.exit_code == 1 and error_line(r).endswith("is not found; pass --calibration DIR")
    assert not (registry / "cnn" / "1" / "model.onnx").exists()     # nothing exported before the data is found
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8", "--check", split_colours,
            "--calibration", split_colours, "-q")
    assert r.exit_code == 0, r.output


def test_predict_precision_standalone_files_and_errors(quantized_cnn, tmp_path, split_colours):
    registry, path, _ = quantized_cnn
    r = cli("predict", tmp_path, "--registry", registry, "-m", "cnn", "--precision", "int8", "--backend", "keras")
    assert r.exit_code == 2
    assert error_line(r) == "error: --precision int8 runs the int8 ONNX file: use --backend onnx or auto"
    # standalone files (no metadata.json beside them): the int8 file runs as int8, the float one is refused
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(path / "model.onnx", alone / "fp32.onnx")
    shutil.copy(path / "model.int8.onnx", alone / "int8.onnx")
    test = split_colours / "test"
    assert _labels(registry, alone / "int8.onnx", test, "int8") == _labels(registry, "cnn", test, "int8")
    r = cli("predict", test, "-m", alone / "fp32.onnx", "--precision", "int8")
    assert r.exit_code == 2
    assert error_line(r) == (f"error: {alone / 'fp32.onnx'}: not an int8 file (no quantization in its metadata); "
                             "use --precision fp32")


def test_mobilenet_v2_int8(tmp_path_factory, split_colours):
    """mobilenet_v2 at 96 px (the pretrained backbone file when there is one, else random weights): the int8
    file agrees with the float one and is about 3.5-4x smaller."""
    registry = tmp_path_factory.mktemp("q-mnv2")
    weights = BACKBONE if Path(BACKBONE).is_file() else "none"
    path = _train(registry, split_colours, "mnv2", "--arch", "mobilenet_v2", "--image-size", 96, "--weights",
                  weights, "--epochs", 3, "--batch-size", 16, "--lr", 0.01,
                  # the quick head-only model this test was written for (a pretrained backbone now brings
                  # fine-tune epochs and augmentation by default, issue 14)
                  "--fine-tune-epochs", 0, "--augment", "none")
    r = cli("export", "mnv2", "--registry", registry, "--quantize", "int8")
    assert r.exit_code == 0, r.output
    int8 = json.loads((path / "metadata.json").read_text())["int8"]
    check = int8["check"]
    assert check["images"] == 30
    if weights != "none":
        # (from random weights, 3 short epochs leave the batch-norm statistics untrained: one answer for all)
        assert check["fp32_accuracy"] >= 0.9, check
    assert check["top1_agreement"] >= 0.99, check
    assert check["int8_accuracy"] >= check["fp32_accuracy"] - 0.01, check
    assert 3.0 < int8["fp32_bytes"] / int8["bytes"] < 4.5, int8
    q = _labels(registry, "mnv2", split_colours / "test", "int8")
    fp = _labels(registry, "mnv2", split_colours / "test", "fp32")
    assert sum(q[p][0] == fp[p][0] for p in fp) / len(fp) >= 0.99


def test_warns_when_the_training_data_changed(quantized_cnn, tmp_path, split_colours):
    registry = _copy(quantized_cnn[0], tmp_path)
    data = tmp_path / "data"
    shutil.copytree(split_colours, data)
    meta_path = registry / "cnn" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["dataset"]["source"] = str(data)
    meta_path.write_text(json.dumps(meta))
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8")
    assert r.exit_code == 0, r.output
    assert "files changed" not in r.stderr                       # the same files elsewhere: no warning
    shutil.copy(data / "train" / "red" / sorted(p.name for p in (data / "train" / "red").iterdir())[0],
                data / "test" / "red" / "moved-from-train.png")
    r = cli("export", "cnn", "--registry", registry, "--quantize", "int8")
    assert r.exit_code == 0, r.output
    assert (f"warning: {data}: the files changed since cnn:1 was trained; its held-out split may now hold "
            "images it trained on (pass --check DIR to be sure)") in r.stderr


def _in_layer(node, layer: str) -> bool:
    """Whether an exported (tf2onnx) node belongs to the Keras layer `layer` (e.g. "model_1/gap_1/Mean")."""
    return any(layer in (s, s.rpartition("_")[0]) for s in node.name.split("/"))


def test_pretrained_default_with_memory_int8(tmp_path_factory, split_colours):
    """The default a user with a pretrained backbone gets (mobilenet_v2, the nearest-neighbour memory, 1 epoch
    from a small local backbone file) exported with --quantize int8: the pretrained recipe keeps the input
    scaling, the stem, the pooled features, the head, the memory and the softmax float and quantizes the 16
    blocks between, the check runs and is reported, the file is smaller and `predict --backend onnx --precision
    int8` runs it."""
    import onnx

    from conftest import write_small_backbone

    registry = tmp_path_factory.mktemp("q-default")
    backbone = registry / "backbone.weights.h5"
    write_small_backbone(backbone, seed=7)
    path = _train(registry, split_colours, "default", "--weights", backbone, "--alpha", 0.35, "--image-size", 96,
                  "--epochs", 1, "--fine-tune-epochs", 0, "--batch-size", 8)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["arch"] == "mobilenet_v2" and meta["memory"]["images"] == 72      # the default's memory is on
    r = cli("export", "default", "--registry", registry, "--quantize", "int8", "--float-fallback", 0.2, "--force")
    assert r.exit_code == 0, r.output
    int8 = json.loads((path / "metadata.json").read_text())["int8"]
    check = int8["check"]
    assert check["images"] == 30 and 0 <= check["top1_agreement"] <= 1 and "fp32_accuracy" in check
    assert f"int8 check on 30 held-out images" in r.stderr and "agreement" in r.stderr
    from imgclf.config import QUANTIZE_MOBILENET_V2_FLOAT_LAYERS, QUANTIZE_PRETRAINED_CALIBRATION
    assert int8["keep_float"] == ["softmax", "memory", "features"]
    assert int8["float_layers"] == list(QUANTIZE_MOBILENET_V2_FLOAT_LAYERS) and \
        int8["calibration_method"] == QUANTIZE_PRETRAINED_CALIBRATION
    assert int8["memory"].startswith("stored features int8")
    # --float-fallback: the file holds the float network too, for the close calls (fallback.py): the int8
    # network alone is less than half the float file, the fallback file both
    fb = check["float_fallback"]
    assert int8["float_fallback"] == fb["margin"] == 0.2
    assert 0 <= fb["answered_in_float"] <= 1 and fb["int8_alone_bytes"] < int8["fp32_bytes"] / 2
    assert int8["fp32_bytes"] < int8["bytes"] < int8["fp32_bytes"] + fb["int8_alone_bytes"] + 2**16
    assert "answered in float" in r.stderr
    assert check["top1_agreement"] >= fb["int8_alone_top1_agreement"]
    settings = json.loads({p.key: p.value for p in onnx.load(str(path / "model.int8.onnx")).metadata_props}
                          ["quantization"])
    assert settings["keep_float"] == int8["keep_float"] and settings["float_nodes"] == int8["float_nodes"]

    graph = onnx.load(str(path / "model.int8.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_in = {o for n in graph.node if n.op_type == "QuantizeLinear" for o in n.input}
    initializers = {i.name: i for i in graph.initializer}
    # the input scaling and the stem (Conv1, expanded_conv) compute in float, the 16 blocks and Conv_1 in int8:
    # a convolution reads int8 weights, or float ones
    convs = {n.input[1]: n.input[1] in dequantized for n in graph.node if n.op_type == "Conv"}
    float_convs = [w for w, q in convs.items() if not q]
    assert all(initializers[w].data_type == onnx.TensorProto.FLOAT for w in float_convs)
    assert (len(convs), len(float_convs)) == (52, 3), (len(convs), len(float_convs))
    late = [n for n in graph.node if n.op_type == "Conv" and (_in_layer(n, "block_16_depthwise")
                                                              or _in_layer(n, "block_1_depthwise"))]
    early = [n for n in graph.node if n.op_type == "Conv" and _in_layer(n, "expanded_conv_depthwise")]
    assert (len(late), len(early)) == (2, 1)
    assert all(n.input[1] in dequantized for n in late) and not any(n.input[1] in dequantized for n in early)
    # the pixels reach the stem unrounded: x / 127.5 - 1 is never re-quantized (uint8 cannot hold its values)
    scale = [n for n in graph.node if _in_layer(n, "scale")]
    assert [n.op_type for n in scale] == ["Mul", "Add"], [n.name for n in scale]
    for n in scale:
        assert not set(n.output) & quantized_in and n.input[0] not in dequantized, f"{n.name}: quantized"
    # every int8 convolution's bias absorbed its int8 weights' mean error (test_bias_correction says how well)
    assert int8["bias_correction"] is True and int8["bias_corrected_convs"] == 49, int8
    # before calibration, the 7 residual streams (one per resolution and width: 16, 24, 32, 64, 96, 160, 320
    # channels) were equalized (test_equalize.py says what that does)
    assert int8["equalize"] == 1.0 and int8["equalized_streams"] == 7, int8
    # the pooled features and all after them compute in float: float weights, float inputs, nothing re-quantized
    pooled = [n for n in graph.node if _in_layer(n, "gap")]
    head = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and _in_layer(n, "probabilities")]
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    vote = [n for n in graph.node if n.op_type == "MatMul" and "/memory" in n.name]
    assert pooled and head and softmax and len(vote) == 2
    for n in pooled + head + softmax:
        assert not set(n.output) & quantized_in, f"{n.name}: its output is quantized"
    for n in head + softmax + vote:
        assert n.input[0] not in dequantized, f"{n.name}: its input is quantized"
    assert initializers[head[0].input[1]].data_type == onnx.TensorProto.FLOAT

    # predict runs the int8 file and agrees with the float one as the check says
    q = _labels(registry, "default", split_colours / "test", "int8")
    r = cli("predict", split_colours / "test", "--registry", registry, "-m", "default", "--backend", "onnx",
            "--format", "json")
    assert r.exit_code == 0, r.output
    fp = {row["path"]: row["label"] for row in json.loads(r.stdout)}
    assert len(q) == 30 and q.keys() == fp.keys()
    assert sum(q[p][0] == fp[p] for p in fp) / 30 == pytest.approx(check["top1_agreement"], abs=1e-6)

    # the default (--float-fallback 0): the int8 network alone (no If, no float weights), as the fallback
    # file's check said
    alone = registry / "alone.int8.onnx"
    r = cli("export", "default", "--registry", registry, "--quantize", "int8", "--force", "--out", alone)
    assert r.exit_code == 0, r.output
    plain = json.loads((path / "metadata.json").read_text())["int8"]
    assert plain["float_fallback"] == 0 and "float_fallback" not in plain["check"]
    assert plain["bytes"] < plain["fp32_bytes"] / 2 and alone.stat().st_size == plain["bytes"]
    assert not [n for n in onnx.load(str(alone)).graph.node if n.op_type == "If"]
    assert plain["check"]["top1_agreement"] == pytest.approx(fb["int8_alone_top1_agreement"], abs=1e-6)


def test_bias_correction_removes_the_mean_error_of_int8_weights(tmp_path):
    """A convolution whose small weights all round to zero in int8 (one large weight per output channel sets
    the scale): its int8 output is lower on average by their sum x the mean input; with bias_correction the
    int8 file's mean output matches the float one's again, and metadata says one convolution was corrected."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from imgclf import quantize as Q

    w = np.full((4, 3, 3, 3), 0.003, np.float32)      # 0.38 of an int8 step (1/127): rounds to 0
    w[:, 0, 1, 1] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 24, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 24, 24])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    x = np.random.default_rng(0).uniform(0, 1, (32, 3, 24, 24)).astype(np.float32)
    errors = {}
    for corrected in (False, True):
        out = tmp_path / f"int8-{corrected}.onnx"
        info = Q.quantize_file(tmp_path / "fp32.onnx", out, x, Q.Recipe(bias_correction=corrected))
        assert info["bias_corrected_convs"] == int(corrected)
        errors[corrected] = float((Q._probabilities(out, x) - Q._probabilities(tmp_path / "fp32.onnx", x)).mean())
    # 26 weights of 0.003 lost x a mean input of 0.5 (less at the zero-padded border, which the correction,
    # from the mean input, does not know: what is left)
    assert errors[False] < -0.03, errors
    assert abs(errors[True]) < 0.1 * abs(errors[False]), errors


def test_gptq_round_lowers_the_layer_error_on_held_out_inputs():
    """GPTQ (Recipe.weight_rounding "gptq") on correlated inputs: integers on the same grid and in the int8
    range, and a lower output error than nearest rounding on inputs it was not fitted on, both for rows
    sharing one Hessian (a full convolution) and for one Hessian per row (depthwise)."""
    from imgclf import quantize as Q

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(27, 27))
    x_fit, x_new = (rng.normal(size=(n, 27)) @ mix for n in (2000, 2000))
    w = rng.normal(size=(8, 27))
    scale = np.abs(w).max(axis=1) / 127
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    shared = Q.gptq_round(w, (x_fit.T @ x_fit)[None], scale, np.zeros(8))
    per_row = Q.gptq_round(w, np.repeat((x_fit.T @ x_fit)[None], 8, axis=0), scale, np.zeros(8))

    def error(q):
        return float(np.mean((x_new @ (q * scale[:, None] - w).T) ** 2))

    for q in (shared, per_row):
        assert np.array_equal(q, np.round(q)) and q.min() >= -127 and q.max() <= 127
        assert error(q) < 0.8 * error(nearest), (error(q), error(nearest))


def _two_conv_model(path: Path) -> None:
    """A full 3x3 convolution, ReLU, a depthwise 3x3 convolution and global pooling: 8 "class" outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="depthwise", pads=[1, 1, 1, 1], group=8,
                              strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["y"], name="flatten")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_gptq_int8_file_runs_keeps_the_scales_and_is_closer_to_float(tmp_path):
    """quantize_file with weight_rounding "gptq": both convolutions rewritten (the depthwise one too), the
    int8 file runs in onnxruntime with the same weight scales as nearest rounding, its weights differ, its
    output on unseen inputs is closer to the float file's, and the agreement check reports on it."""
    import onnx
    from onnx import numpy_helper

    from imgclf import quantize as Q

    _two_conv_model(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(2)
    smooth = lambda n: np.repeat(np.repeat(rng.uniform(0, 1, (n, 3, 8, 8)), 2, 2), 2, 3).astype(np.float32)
    calib, unseen = smooth(64), smooth(64)
    out, infos = {}, {}
    for rounding in ("nearest", "gptq"):
        out[rounding] = tmp_path / f"{rounding}.onnx"
        infos[rounding] = Q.quantize_file(tmp_path / "fp32.onnx", out[rounding], calib,
                                          Q.Recipe(keep_float=(), weight_rounding=rounding))
    assert infos["gptq"]["gptq_rounded_convs"] == 2 and infos["nearest"]["gptq_rounded_convs"] == 0
    assert infos["gptq"]["weight_rounding"] == "gptq"
    arrays = {r: {i.name: numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer}
              for r, p in out.items()}
    scales = [n for n in arrays["nearest"] if n.startswith("w") and n.endswith("_scale")]
    assert len(scales) == 2 and all(np.array_equal(arrays["nearest"][n], arrays["gptq"][n]) for n in scales)
    assert any(not np.array_equal(arrays["nearest"][n], arrays["gptq"][n]) for n in arrays["nearest"]
               if n.startswith("w") and n.endswith("_quantized"))
    p32 = Q._probabilities(tmp_path / "fp32.onnx", unseen)
    errors = {r: float(np.mean((Q._probabilities(p, unseen) - p32) ** 2)) for r, p in out.items()}
    assert errors["gptq"] < errors["nearest"], errors
    images = Q.ImageSet(unseen, p32.argmax(1), [f"{i}.png" for i in range(64)], "unseen", [])
    figures, rows = Q.agreement(tmp_path / "fp32.onnx", out["gptq"], images, [str(c) for c in range(8)])
    assert figures["images"] == 64 and 0 <= figures["top1_agreement"] <= 1
    assert len(rows) == figures["changed_labels"]


def test_unknown_weight_rounding_is_refused():
    from imgclf import quantize as Q
    from imgclf.errors import UsageError

    with pytest.raises(UsageError, match="weight_rounding must be one of nearest, gptq, got 'adaround'"):
        Q.Recipe(weight_rounding="adaround")
