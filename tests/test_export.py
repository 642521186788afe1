"""`imgclf export`: an ONNX file that carries its class names and preprocessing, and agrees with Keras."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import COLOURS, assert_onnx_matches_keras, child_env, cli, error_line, image_files, noisy

# What a user with only the .onnx file, onnxruntime and Pillow does (no imgclf, no TensorFlow).
STANDALONE = r"""
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
onnx_path, image_path = sys.argv[1:3]
sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
meta = sess.get_modelmeta().custom_metadata_map
names, pre = json.loads(meta["class_names"]), json.loads(meta["preprocessing"])
h, w = pre["image_size"]
img = Image.open(image_path).convert("L" if pre["channels"] == 1 else "RGB").resize((w, h), Image.BILINEAR)
x = np.asarray(img, dtype=np.float32).reshape(1, h, w, pre["channels"])
p = sess.run(None, {sess.get_inputs()[0].name: x})[0][0]
print(json.dumps({"label": names[int(p.argmax())], "probs": p.tolist(),
                  "imported": sorted(m for m in ("tensorflow", "keras", "imgclf") if m in sys.modules)}))
"""


def test_export_writes_onnx_with_metadata(exported):
    import onnx

    path = exported.path / "model.onnx"
    assert path.is_file()
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == ["blue", "green", "red"]
    pre = json.loads(props["preprocessing"])
    assert pre["image_size"] == [16, 16] and pre["channels"] == 3 and pre["input_range"] == [0, 255]
    assert json.loads(props["imgclf"])["class_names"] == ["blue", "green", "red"]
    (inp,) = model.graph.input
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1:] == [16, 16, 3]                                   # NHWC raw pixels, as the spec says
    meta = exported.metadata
    assert meta["onnx"]["checked_images"] >= 1 and meta["onnx"]["check_source"] == "images"
    # parity seen by us, not read from the exporter's report: every training image, Keras vs onnxruntime
    assert_onnx_matches_keras(exported.path, image_files(exported.data), atol=1e-4)
    listing = json.loads(cli("models", "list", "--registry", exported.registry, "--format", "json").stdout)
    assert listing["models"][0]["onnx"] is True


@pytest.mark.parametrize("colour", ["red", "green", "blue"])
def test_onnxruntime_alone_matches_keras(exported, tmp_path, colour):
    import keras

    from imgclf.preprocessing import PreprocessingSpec, load_image

    image = tmp_path / f"{colour}.png"
    noisy("RGB", (30, 22), COLOURS[colour], np.random.default_rng(5)).save(image)
    proc = subprocess.run([sys.executable, "-c", STANDALONE, str(exported.path / "model.onnx"), str(image)],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr
    alone = json.loads(proc.stdout)
    assert alone["imported"] == []
    assert alone["label"] == colour

    meta = exported.metadata
    model = keras.models.load_model(exported.path / "model.keras", safe_mode=True, compile=False)
    x = load_image(image, PreprocessingSpec.from_dict(meta["preprocessing"]))[None].astype(np.float32)
    keras_p = np.asarray(model(x, training=False))[0]
    assert meta["class_names"][int(keras_p.argmax())] == colour
    np.testing.assert_allclose(alone["probs"], keras_p, atol=1e-4)


def test_export_out_file_refuses_to_overwrite_without_force(exported, tmp_path):
    out = tmp_path / "copy.onnx"
    r = cli("export", "colours", "--registry", exported.registry, "--out", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out)
    assert out.read_bytes() == (exported.path / "model.onnx").read_bytes()   # the same file as the registry's
    out.write_bytes(b"user's file")
    line = error_line(cli("export", "colours", "--registry", exported.registry, "--out", out))
    assert str(out) in line and "--force" in line
    assert out.read_bytes() == b"user's file"
    r = cli("export", "colours", "--registry", exported.registry, "--out", out, "--force")
    assert r.exit_code == 0, r.output
    import onnx
    assert {p.key for p in onnx.load(str(out)).metadata_props} >= {"class_names", "preprocessing"}


@pytest.mark.parametrize("args, word", [
    (["nope"], "unknown model"),
    (["colours", "--opset", "3"], "--opset"),
])
def test_export_errors(exported, args, word):
    assert word in error_line(cli("export", *args, "--registry", exported.registry))


def test_export_format_is_a_choice(exported):
    r = cli("export", "colours", "--format", "tflite", "--registry", exported.registry)
    assert r.exit_code == 2 and "Invalid value for '--format'" in r.stderr and "'onnx'" in r.stderr, r.stderr


def test_mixed_precision_model_exports_float32_and_agrees(tmp_path, colour_data):
    import keras
    import onnx

    reg = tmp_path / "reg"
    r = cli("train", colour_data, "--registry", reg, "--arch", "cnn", "--epochs", 1, "--image-size", 16,
            "--patience", 0, "--name", "mp", "--mixed-precision", "--format", "json")
    assert r.exit_code == 0, r.output
    assert keras.mixed_precision.global_policy().name == "float32"      # the run did not leak its policy
    meta = json.loads((reg / "mp" / "1" / "metadata.json").read_text())
    assert meta["config"]["mixed_precision"] is True
    saved = keras.models.load_model(reg / "mp" / "1" / "model.keras", safe_mode=True, compile=False)
    assert any(l.dtype_policy.name == "mixed_float16" for l in saved.layers)   # it really trained in float16

    # an in-process caller's own global dtype policy survives the export (its float32 rebuild sets and
    # restores it)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        r = cli("export", "mp", "--registry", reg)
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert r.exit_code == 0, r.output
    model = onnx.load(str(reg / "mp" / "1" / "model.onnx"))
    f32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [f32]
    f16 = onnx.TensorProto.FLOAT16
    assert not [t.name for t in model.graph.initializer if t.data_type == f16]   # no float16 weights
    casts_to = [a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert f16 not in casts_to                                                    # no float16 compute inside
    # parity with what users run: `predict --backend keras` loads the saved mixed_float16 model, so the float32
    # ONNX file is compared with it (float16 compute: within 5e-3), not only with a float32 rebuild
    from imgclf.export import MIXED_PRECISION_TOLERANCE
    assert MIXED_PRECISION_TOLERANCE == 5e-3
    diff = assert_onnx_matches_keras(reg / "mp" / "1", image_files(colour_data), atol=MIXED_PRECISION_TOLERANCE)
    print(f"mixed precision: max |dp| saved float16 model vs ONNX {diff:.2e}")
    onnx_meta = json.loads((reg / "mp" / "1" / "metadata.json").read_text())["onnx"]
    assert 0 < onnx_meta["max_abs_diff_saved"] <= diff + 1e-6    # the exporter checked some of the same images
    assert onnx_meta["saved_tolerance"] == MIXED_PRECISION_TOLERANCE


def _perturbed_rebuild(real):
    """An exporter whose converted graph is not the saved model (weights shifted): what a bug in the float32
    rebuild (or a wrong conversion) would produce."""
    def rebuild(ref, model):
        import keras
        clone = keras.models.clone_model(real(ref, model))
        clone.set_weights([w + 0.05 * np.sign(w + 1e-9) for w in model.get_weights()])
        return clone
    return rebuild


def test_export_that_disagrees_with_the_saved_model_is_refused_and_saves_nothing(registry_copy, tmp_path,
                                                                                   monkeypatch):
    import imgclf.export

    monkeypatch.setattr(imgclf.export, "_float32_model", _perturbed_rebuild(imgclf.export._float32_model))
    before = (registry_copy / "colours" / "1" / "metadata.json").read_text()
    out = tmp_path / "out.onnx"
    r = cli("export", "colours", "--registry", registry_copy, "--out", out)
    assert r.exit_code == 1
    line = error_line(r)
    assert line.startswith("error: colours:1: ONNX disagrees with") and line.endswith("not saved"), line
    assert not (registry_copy / "colours" / "1" / "model.onnx").exists() and not out.exists()
    assert (registry_copy / "colours" / "1" / "metadata.json").read_text() == before    # no "onnx" entry
    assert r.stdout == ""


def test_check_images_given_as_a_folder_and_as_files(registry_copy, trained, tmp_path):
    folder = trained.data / "red"
    r = cli("export", "colours", "--registry", registry_copy, "--check", folder)
    assert r.exit_code == 0, r.output
    onnx_meta = json.loads((registry_copy / "colours" / "1" / "metadata.json").read_text())["onnx"]
    assert onnx_meta["checked_images"] == len(image_files(folder)) == 12
    assert onnx_meta["check_source"] == "images"
    assert "parity check on 12 images" in r.stderr
    files = image_files(trained.data / "blue")[:3]
    r = cli("export", "colours", "--registry", registry_copy, "--check", files[0], "--check", files[1],
            "--check", files[2])
    assert r.exit_code == 0, r.output
    assert json.loads((registry_copy / "colours" / "1" / "metadata.json").read_text())["onnx"]["checked_images"] == 3
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no images")
    line = error_line(cli("export", "colours", "--registry", registry_copy, "--check", tmp_path / "nothing"))
    assert "none of the --check images could be read" in line
