"""Calibrated confidence: temperature scaling fitted on validation images, applied by predict (both
backends), evaluate and inside the ONNX graph; ECE/NLL/Brier before and after; abstaining; risk-coverage."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imgclf import calibration as C
from imgclf import registry
from imgclf.data.pipeline import decode
from imgclf.data.scan import scan
from imgclf.preprocessing import PreprocessingSpec

from conftest import cli, derived_model, error_line

OVERCONFIDENT = 10.0  # the final layer's weights times this: logits x10, the same labels


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------- the maths


def test_fit_recovers_the_temperature_of_an_overconfident_model():
    """Labels drawn from softmax(z) but the model reports softmax(3 z): the fit finds T close to 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (6000, 5))
    y = np.array([rng.choice(5, p=p) for p in _softmax(z)])
    overconfident = _softmax(3 * z)
    t = C.fit_temperature(overconfident, y)
    assert 2.7 < t < 3.3, t
    calibrated = C.apply_temperature(overconfident, t)
    assert C.nll(calibrated, y) < C.nll(overconfident, y)
    assert C.ece(calibrated, y) < C.ece(overconfident, y) / 3
    assert (calibrated.argmax(1) == overconfident.argmax(1)).all()
    np.testing.assert_allclose(calibrated, _softmax(z), atol=0.02)


def test_apply_temperature_identity_sum_and_composition():
    p = _softmax(np.random.default_rng(1).normal(0, 4, (50, 4))).astype(np.float32)
    assert C.apply_temperature(p, 1.0) is p
    q = C.apply_temperature(p, 2.0)
    assert q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(C.apply_temperature(q, 1.5), C.apply_temperature(p, 3.0), atol=1e-6)
    np.testing.assert_allclose(C.apply_temperature(q, 0.5), p, atol=1e-5)   # undone exactly
    # a probability of exactly 0 (softmax underflow) is floored, not log(0) = -inf -> NaN
    zeros = np.array([[1.0, 0.0, 0.0]], np.float32)
    assert np.isfinite(C.apply_temperature(zeros, 3.0)).all()


def test_ece_brier_nll_on_known_values():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bins: 0.9 (2 images, accuracy 0.5) and 0.6 (2 images, accuracy 1.0): ECE = 0.5*0.4 + 0.5*0.4
    assert C.ece(probs, y) == pytest.approx(0.4)
    assert C.brier(probs, y) == pytest.approx((0.02 + 1.62 + 0.32 + 0.32) / 4)
    assert C.nll(probs, y) == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.6])))


def test_risk_coverage_and_the_lowest_threshold_for_a_target():
    probs = np.array([[0.9, 0.1], [0.85, 0.15], [0.75, 0.25], [0.65, 0.35], [0.55, 0.45]])
    y = np.array([0, 0, 1, 0, 1])          # right, right, wrong, right, wrong
    rows = {r["threshold"]: r for r in C.risk_coverage(probs, y)}
    assert rows[0.0] == {"threshold": 0.0, "coverage": 1.0, "accuracy": 0.6}
    assert rows[0.8] == {"threshold": 0.8, "coverage": 0.4, "accuracy": 1.0}
    assert rows[0.9] == {"threshold": 0.9, "coverage": 0.2, "accuracy": 1.0}    # kept: top probability >= t
    assert rows[0.95] == {"threshold": 0.95, "coverage": 0.0, "accuracy": None}
    assert rows[0.99]["coverage"] == 0.0 and rows[0.99]["accuracy"] is None
    # 3 of the top 4 right = 0.75: the lowest threshold reaching 0.75 keeps 4 images
    assert C.threshold_for_accuracy(probs, y, 0.75) == {"target": 0.75, "threshold": 0.65, "coverage": 0.8,
                                                         "accuracy": 0.75}
    assert C.threshold_for_accuracy(probs, y, 0.6)["threshold"] == 0.0
    assert C.threshold_for_accuracy(probs, y, 1.0)["threshold"] == 0.85
    wrong_only = C.threshold_for_accuracy(probs, np.array([1, 1, 0, 1, 0]), 0.5)
    assert wrong_only["threshold"] is None and wrong_only["coverage"] == 0.0


# ------------------------------------------------------------------------------------------ train


def test_train_fits_the_temperature_on_the_val_split(tmp_path, hard_data):
    r = cli("train", hard_data, "--registry", tmp_path, "--arch", "mlp", "--epochs", 2, "--patience", 0,
            "--name", "fitted", "--format", "json")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "fitted" / "1" / "metadata.json").read_text())
    cal = meta["calibration"]
    assert cal["method"] == "temperature" and cal["fitted_on"] == "val" and cal["images"] == 120
    assert cal["temperature"] != 1.0 and cal["nll"] < cal["nll_uncalibrated"]
    assert meta["config"]["calibrate"] == "temperature"
    assert "calibrated on 120 validation images: temperature" in r.stderr

    r = cli("train", hard_data, "--registry", tmp_path, "--arch", "mlp", "--epochs", 1, "--name", "plain",
            "--calibrate", "none")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "plain" / "1" / "metadata.json").read_text())["calibration"]["temperature"] == 1.0

    r = cli("train", hard_data / "train", "--registry", tmp_path, "--arch", "mlp", "--epochs", 1, "--name",
            "noval", "--val-split", 0)
    assert r.exit_code == 0, r.output
    assert "needs a validation split" in r.stderr
    assert json.loads((tmp_path / "noval" / "1" / "metadata.json").read_text())["calibration"]["temperature"] == 1.0

    r = cli("train", hard_data, "--registry", tmp_path, "--calibrate", "platt")
    assert r.exit_code == 2
    assert "Invalid value for '--calibrate'" in r.stderr and "'platt' is not one of" in r.stderr
    from imgclf.config import TrainConfig
    from imgclf.errors import UsageError
    with pytest.raises(UsageError, match=r"^--calibrate must be one of temperature, none, got 'platt'$"):
        TrainConfig(calibrate="platt").validate()


# ------------------------------------------------------------- a deliberately overconfident model


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory, hard_trained):
    """hard:2 = hard:1 with logits x10 (uncalibrated) and hard:3 = the same model with T fitted on val
    by the function `imgclf train` uses."""
    import keras

    reg = tmp_path_factory.mktemp("registry-overconfident")
    shutil.copytree(hard_trained.registry, reg, dirs_exist_ok=True)
    derived_model(hard_trained, reg, 2, lambda k, b: (k * OVERCONFIDENT, b * OVERCONFIDENT))
    path = derived_model(hard_trained, reg, 3, lambda k, b: (k * OVERCONFIDENT, b * OVERCONFIDENT))
    ref = registry.resolve(reg, "hard:3")
    val = scan(hard_trained.data / "val", class_names=ref.metadata["class_names"])
    decoded = decode(val.paths, val.labels, PreprocessingSpec.from_dict(ref.metadata["preprocessing"]))
    model = keras.models.load_model(path / "model.keras", compile=False)
    registry.update_metadata(ref, calibration=C.calibrate_keras_model(model, decoded))
    return reg


def test_calibration_lowers_ece_of_an_overconfident_model_and_keeps_accuracy(overconfident, hard_data, tmp_path):
    t = registry.resolve(overconfident, "hard:3").metadata["calibration"]["temperature"]
    assert t > 2, t   # logits x10: the fit softens them a lot
    reports = {}
    for v in (2, 3):
        r = cli("evaluate", f"hard:{v}", hard_data, "--registry", overconfident, "--format", "json", "--out",
                tmp_path / str(v))
        assert r.exit_code == 0, r.output
        reports[v] = json.loads(r.stdout)
    raw, cal = reports[2]["calibration"], reports[3]["calibration"]
    assert raw["temperature"] == 1.0 and raw["ece"] == raw["ece_uncalibrated"]
    assert cal["temperature"] == pytest.approx(t)
    assert cal["ece_uncalibrated"] == pytest.approx(raw["ece"])              # the same model before T
    assert cal["ece"] < cal["ece_uncalibrated"] / 2, cal
    assert cal["nll"] < cal["nll_uncalibrated"] and cal["brier"] < cal["brier_uncalibrated"]
    assert reports[3]["accuracy"] == reports[2]["accuracy"]
    assert reports[3]["confusion_matrix"] == reports[2]["confusion_matrix"]
    metrics = json.loads((tmp_path / "3" / "metrics.json").read_text())
    assert metrics["calibration"] == cal and metrics["risk_coverage"] == reports[3]["risk_coverage"]
    for name in ("reliability.png", "risk_coverage.png"):
        with Image.open(tmp_path / "3" / name) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_onnx_and_keras_give_the_same_calibrated_probabilities(overconfident, hard_data, tmp_path):
    import onnxruntime as ort

    r = cli("export", "hard:3", "--registry", overconfident, "--out", tmp_path / "hard3.onnx")
    assert r.exit_code == 0, r.output
    images = sorted((hard_data / "test").rglob("*.png"))[::4]
    out = {}
    for backend in ("keras", "onnx"):
        r = cli("predict", *images, "--model", "hard:3", "--registry", overconfident, "--backend", backend,
                "--format", "json", "--top-k", 3)
        assert r.exit_code == 0, r.output
        out[backend] = {row["path"]: {t["label"]: t["probability"] for t in row["top_k"]}
                        for row in json.loads(r.stdout)}
    r = cli("predict", *images, "--model", "hard:2", "--registry", overconfident, "--backend", "keras",
            "--format", "json", "--top-k", 3)
    uncalibrated = {row["path"]: row["confidence"] for row in json.loads(r.stdout)}
    for path, probs in out["keras"].items():
        assert probs == pytest.approx(out["onnx"][path], abs=1e-5)
        assert max(probs.values()) < uncalibrated[path] + 1e-6
    assert np.mean([max(out["keras"][p].values()) for p in uncalibrated]) < np.mean(list(uncalibrated.values()))

    # the standalone file, without imgclf: the temperature is inside the graph
    session = ort.InferenceSession(str(tmp_path / "hard3.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["imgclf"])
    names, spec = meta["class_names"], PreprocessingSpec.from_dict(meta["preprocessing"])
    assert meta["calibration"]["in_graph"] is True and meta["calibration"]["temperature"] > 2
    pixels = decode([str(p) for p in images], np.zeros(len(images), np.int32), spec).pixels.astype(np.float32)
    raw_onnx = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    for row, path in zip(raw_onnx, images):
        assert dict(zip(names, row.tolist())) == pytest.approx(out["keras"][str(path)], abs=1e-5)
    export_check = registry.resolve(overconfident, "hard:3").metadata["onnx"]
    assert export_check["temperature"] > 2 and export_check["max_abs_diff"] < 1e-4


def test_coverage_falls_as_the_threshold_rises(overconfident, hard_data, tmp_path):
    r = cli("evaluate", "hard:3", hard_data, "--registry", overconfident, "--format", "json", "--out", tmp_path,
            "--target-accuracy", 0.8)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    rows = report["risk_coverage"]
    assert [r_["threshold"] for r_ in rows] == sorted(r_["threshold"] for r_ in rows)
    coverage = [r_["coverage"] for r_ in rows]
    assert coverage == sorted(coverage, reverse=True) and coverage[0] == 1.0 > coverage[-1]
    assert rows[0]["accuracy"] == report["accuracy"]
    target = report["target_accuracy"]
    assert target["threshold"] is not None and target["accuracy"] >= 0.8 > report["accuracy"]
    assert target["coverage"] < 1.0

    # predict --min-confidence at that threshold keeps exactly that share, at that accuracy
    images = sorted((hard_data / "test").rglob("*.png"))
    r = cli("predict", hard_data / "test", "--model", "hard:3", "--registry", overconfident, "--format", "jsonl",
            "--min-confidence", target["threshold"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    kept = [row for row in rows if not row["abstained"]]
    assert len(rows) == len(images) and len(kept) == round(target["coverage"] * len(images))
    assert all(row["label"] is None and row["confidence"] < target["threshold"] for row in rows if row["abstained"])
    right = sum(row["label"] == row["path"].split("/")[-2] for row in kept)
    assert right / len(kept) == pytest.approx(target["accuracy"], abs=1e-6)

    r = cli("evaluate", "hard:3", hard_data, "--registry", overconfident, "--out", tmp_path, "--force",
            "--target-accuracy", 1.2)
    assert r.exit_code == 2
    assert error_line(r) == "error: --target-accuracy must be between 0 and 1, got 1.2"


def test_predict_abstains_below_min_confidence(overconfident, hard_data):
    images = sorted((hard_data / "test" / "a").iterdir())[:6]
    r = cli("predict", *images, "--model", "hard:3", "--registry", overconfident, "--format", "json")
    confidences = sorted(row["confidence"] for row in json.loads(r.stdout))
    p = (confidences[2] + confidences[3]) / 2          # 3 below, 3 above
    r = cli("predict", *images, "--model", "hard:3", "--registry", overconfident, "--format", "json",
            "--min-confidence", p)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert sum(row["abstained"] for row in rows) == 3
    for row in rows:
        assert row["abstained"] == (row["confidence"] < p)
        assert (row["label"] is None) == row["abstained"] and row["error"] is None and row["top_k"]
    r = cli("predict", *images, "--model", "hard:3", "--registry", overconfident, "--format", "table",
            "--min-confidence", p)
    assert r.exit_code == 0 and r.stdout.count("uncertain") == 3, r.stdout
    r = cli("predict", *images, "--model", "hard:3", "--registry", overconfident, "--format", "csv",
            "--min-confidence", p)
    lines = r.stdout.splitlines()
    assert lines[0] == "path,label,confidence,top_k,error,abstained"
    assert sum(line.endswith(",true") for line in lines[1:]) == 3
    r = cli("predict", *images, "--model", "hard:3", "--registry", overconfident, "--min-confidence", -0.1)
    assert r.exit_code == 2
    assert error_line(r) == "error: --min-confidence must be between 0 and 1, got -0.1"


def test_models_without_calibration_behave_as_t_1(trained, tmp_path):
    """A model trained before calibration existed (no "calibration" in metadata.json) predicts as before."""
    reg = tmp_path / "reg"
    shutil.copytree(trained.registry, reg)
    meta_path = reg / "colours" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("calibration", None)
    meta_path.write_text(json.dumps(meta))
    assert C.temperature_of(meta) == 1.0
    img = sorted((trained.data / "red").iterdir())[0]
    r = cli("predict", img, "--model", "colours", "--registry", reg, "--format", "json", "--backend", "keras")
    assert r.exit_code == 0, r.output
    import keras
    from imgclf.preprocessing import load_image

    model = keras.models.load_model(reg / "colours" / "1" / "model.keras", compile=False)
    x = load_image(str(img), PreprocessingSpec.from_dict(meta["preprocessing"]))[None].astype(np.float32)
    p = np.asarray(model(x, training=False))[0]
    assert json.loads(r.stdout)[0]["confidence"] == pytest.approx(float(p.max()), abs=1e-6)
