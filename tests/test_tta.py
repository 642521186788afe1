"""`imgclf predict/evaluate --tta`: each image's probabilities averaged with its left-right mirror's, the
same with the Keras model and the ONNX export."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import cli, make_tree
from imgclf.calibration import temperature_of


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, exported):
    """Three 16x16 images (the model's size: no resize, so a mirrored file decodes to mirrored pixels) and
    their mirrors, saved as PNG (lossless)."""
    root = make_tree(tmp_path_factory.mktemp("tta") / "t", {"blue": 1, "green": 1, "red": 1}, mode="RGB",
                     size=(16, 16), seed=7)
    files = sorted(p for p in root.rglob("*.png"))
    mirrors = []
    for f in files:
        m = f.with_name(f.stem + "_mirror.png")
        Image.open(f).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(m)
        mirrors.append(m)
    return files, mirrors


def probabilities(registry, images, *options) -> np.ndarray:
    r = cli("predict", *images, "--model", "colours", "--registry", registry, "--top-k", 3, "--format", "jsonl",
            *options)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(p) for p in images]
    return np.array([[{t["label"]: t["probability"] for t in row["top_k"]}[c] for c in ("blue", "green", "red")]
                     for row in rows])


@pytest.mark.parametrize("backend", ["keras", "onnx"])
def test_tta_is_the_mean_of_the_image_and_its_mirror(exported, pictures, backend):
    files, mirrors = pictures
    plain = probabilities(exported.registry, files, "--backend", backend)
    mirrored = probabilities(exported.registry, mirrors, "--backend", backend)
    tta = probabilities(exported.registry, files, "--backend", backend, "--tta")
    assert np.abs(plain - mirrored).max() > 1e-4          # the mirrors do change the answer
    # the mean of the uncalibrated answers (p_raw is proportional to p_calibrated ** T), then the temperature
    t = temperature_of(exported.metadata)
    raw = [q ** t / (q ** t).sum(1, keepdims=True) for q in (plain, mirrored)]
    mean = (raw[0] + raw[1]) / 2
    expected = mean ** (1 / t) / (mean ** (1 / t)).sum(1, keepdims=True)
    np.testing.assert_allclose(tta, expected, atol=5e-5)
    np.testing.assert_allclose(tta.sum(1), 1.0, atol=1e-4)


def test_tta_keras_and_onnx_agree(exported, pictures):
    files, _ = pictures
    keras_p = probabilities(exported.registry, files, "--backend", "keras", "--tta")
    onnx_p = probabilities(exported.registry, files, "--backend", "onnx", "--tta")
    np.testing.assert_allclose(keras_p, onnx_p, atol=1e-4)


def test_evaluate_records_tta(tmp_path, exported):
    reports = {}
    for flag in ([], ["--tta"]):
        out = tmp_path / ("tta" if flag else "plain")
        r = cli("evaluate", "colours", exported.data, "--registry", exported.registry, "--out", out, "--no-html",
                "--format", "json", *flag)
        assert r.exit_code == 0, r.output
        reports[bool(flag)] = json.loads(r.stdout)
    assert reports[False]["tta"] is False and reports[True]["tta"] is True
    assert reports[True]["images"] == reports[False]["images"] == 36
    assert 0.0 <= reports[True]["accuracy"] <= 1.0


def test_tta_in_help():
    for command in ("predict", "evaluate"):
        r = cli(command, "--help")
        assert r.exit_code == 0 and "--tta" in r.output and "mirror" in r.output
