"""Class order: the model's class_names (sorted folder names, in index order) decide every label, whatever
the folders of the data at hand: a subset of the classes, numeric names ('10' sorts before '2'), names that
differ only in case, and a val/ that lacks a class."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cli, noisy

# four classes, four colours; the names sort as 10 < 2 < Cat < cat
COLOURS = {"2": (210, 40, 40), "10": (40, 190, 40), "cat": (40, 40, 210), "Cat": (220, 210, 40)}
MODEL_ORDER = ["10", "2", "Cat", "cat"]


def draw(root, counts, seed):
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            noisy("RGB", (20, 20), COLOURS[cls], rng).save(root / cls / f"img_{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model trained on a split root whose val/ lacks class '10'."""
    root = tmp_path_factory.mktemp("order")
    data = root / "data"
    draw(data / "train", {c: 10 for c in COLOURS}, seed=1)
    draw(data / "val", {"2": 2, "cat": 2, "Cat": 2}, seed=2)          # no '10' in val/
    registry = root / "reg"
    r = cli("train", data, "--registry", registry, "--arch", "mlp", "--epochs", 6, "--image-size", 16,
            "--patience", 0, "--name", "order", "--format", "json")
    assert r.exit_code == 0, r.output
    return registry, json.loads((registry / "order" / "1" / "metadata.json").read_text())


def test_class_names_are_sorted_folder_names_and_a_missing_val_class_is_counted_as_zero(model):
    _, meta = model
    assert meta["class_names"] == MODEL_ORDER
    assert meta["dataset"]["val"]["per_class"] == {"10": 0, "2": 2, "Cat": 2, "cat": 2}
    assert meta["dataset"]["train"]["per_class"] == {c: 10 for c in MODEL_ORDER}
    assert meta["metrics"]["val_accuracy"] >= 0.8


def test_evaluate_on_a_subset_of_the_classes_keeps_the_models_order(model, tmp_path):
    registry, _ = model
    # folders '2' and 'cat' only: numbered on their own they would be 0 and 1; in the model they are 1 and 3
    data = draw(tmp_path / "subset", {"cat": 6, "2": 6}, seed=3)
    r = cli("evaluate", "order", data, "--registry", registry, "--out", tmp_path / "ev", "--format", "json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["class_names"] == MODEL_ORDER
    assert [row["support"] for row in report["per_class"]] == [0, 6, 0, 6]
    assert report["accuracy"] >= 0.8, report
    cm = np.array(report["confusion_matrix"])
    assert cm[[0, 2]].sum() == 0 and cm[1].sum() == cm[3].sum() == 6
    assert cm[1, 1] + cm[3, 3] == round(report["accuracy"] * 12)


def test_predict_tells_names_that_differ_only_in_case_apart(model, tmp_path):
    registry, _ = model
    data = draw(tmp_path / "cases", {"Cat": 4, "cat": 4, "10": 4}, seed=4)
    r = cli("predict", data, "--model", "order", "--registry", registry, "--backend", "keras", "--format",
            "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 12
    right = sum(row["label"] == row["path"].split("/")[-2] for row in rows)
    assert right >= 10, [(row["path"].split("/")[-2], row["label"]) for row in rows]
    assert {row["label"] for row in rows} <= set(MODEL_ORDER)
