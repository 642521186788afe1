"""The whole loop on the shipped sample_images/: split -> train -> evaluate -> export -> predict (both backends)."""
from __future__ import annotations

import json

import pytest

from conftest import SAMPLE_IMAGES, cli, tree_digest


def test_whole_loop_on_sample_images(tmp_path):
    before = tree_digest(SAMPLE_IMAGES)
    split = tmp_path / "split"
    registry = tmp_path / "registry"

    r = cli("split", SAMPLE_IMAGES, split, "--format", "json")
    assert r.exit_code == 0, r.output
    counts = json.loads(r.stdout)["counts"]
    classes = sorted(counts["train"])
    assert len(classes) == 10 and all(counts["test"][c] >= 1 for c in classes)

    r = cli("train", split, "--registry", registry, "--epochs", 8, "--name", "fashion", "--format", "json")
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout)
    assert (trained["name"], trained["version"]) == ("fashion", 1)

    r = cli("evaluate", "fashion", split, "--registry", registry, "--format", "json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["class_names"] == classes
    assert report["images"] == sum(counts["test"].values())
    print(f"sample_images test accuracy: {report['accuracy']:.3f}")
    assert report["accuracy"] > 0.3, report["accuracy"]          # chance is 0.1
    assert report["accuracy"] == pytest.approx(trained["metrics"]["test_accuracy"], abs=1e-3)

    r = cli("export", "fashion", "--registry", registry)
    assert r.exit_code == 0, r.output
    assert (registry / "fashion" / "1" / "model.onnx").is_file()

    labels = {}
    for backend in ("keras", "onnx"):
        r = cli("predict", split / "test", "--model", "fashion", "--registry", registry, "--backend", backend,
                "--format", "json")
        assert r.exit_code == 0, r.output
        rows = json.loads(r.stdout)
        labels[backend] = [(row["path"], row["label"]) for row in rows]
    assert labels["keras"] == labels["onnx"]
    assert len(labels["keras"]) == report["images"]
    correct = sum(path.split("/")[-2] == label for path, label in labels["onnx"])
    assert correct / len(labels["onnx"]) == pytest.approx(report["accuracy"], abs=1e-6)
    assert tree_digest(SAMPLE_IMAGES) == before                  # the shipped data is never modified
