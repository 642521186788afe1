"""`imgclf evaluate MODEL DATA`: the report, and the files it writes."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import PLANTED, cli, error_line, make_tree, planted_eval_tree

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return planted_eval_tree(tmp_path_factory.mktemp("eval") / "eval")


def evaluate_json(registry, data, out, *extra):
    r = cli("evaluate", "colours", data, "--registry", registry, "--out", out, "--format", "json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_evaluate_json_report(registry_copy, eval_data, tmp_path):
    report = evaluate_json(registry_copy, eval_data, tmp_path / "out")
    assert report["class_names"] == CLASSES
    n = 5 * 3 + len(PLANTED)
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == n
    assert cm.sum(axis=1).tolist() == [5, 6, 7]                   # rows are the true classes (folders)
    assert report["accuracy"] == pytest.approx(np.trace(cm) / n, abs=1e-6)
    assert report["accuracy"] >= (n - len(PLANTED) - 2) / n        # the tiny model did learn the colours
    assert [c["class"] for c in report["per_class"]] == CLASSES
    assert [c["support"] for c in report["per_class"]] == [5, 6, 7]
    for c in report["per_class"]:
        assert set(c) >= {"precision", "recall", "f1", "support"}
        assert 0 <= c["precision"] <= 1 and 0 <= c["recall"] <= 1
    mis = report["misclassified"]
    assert len(mis) == n - np.trace(cm)
    assert all(set(m) == {"path", "true", "predicted", "confidence"} for m in mis)
    conf = [m["confidence"] for m in mis]
    assert conf == sorted(conf, reverse=True)                       # most confident mistakes first
    by_path = {m["path"].split("eval/")[-1]: m for m in mis}
    for rel, colour in PLANTED.items():
        assert by_path[rel]["true"] == rel.split("/")[0]
        assert by_path[rel]["predicted"] == colour


def test_evaluate_writes_its_files(registry_copy, eval_data, tmp_path):
    out = tmp_path / "eval out"
    report = evaluate_json(registry_copy, eval_data, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == report["accuracy"] and metrics["confusion_matrix"] == report["confusion_matrix"]
    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == CLASSES and [r[0] for r in rows[1:]] == CLASSES
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == report["confusion_matrix"]
    with open(out / "misclassified.csv", newline="") as f:
        mis_rows = list(csv.DictReader(f))
    assert [r["path"] for r in mis_rows] == [m["path"] for m in report["misclassified"]]
    assert [float(r["confidence"]) for r in mis_rows] == [m["confidence"] for m in report["misclassified"]]
    for png in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50


def test_evaluate_refuses_to_overwrite_without_force(registry_copy, eval_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{\"mine\": true}")
    line = error_line(cli("evaluate", "colours", eval_data, "--registry", registry_copy, "--out", out))
    assert "metrics.json" in line and "--force" in line
    assert json.loads((out / "metrics.json").read_text()) == {"mine": True}
    report = evaluate_json(registry_copy, eval_data, out, "--force")
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == report["accuracy"]


def test_evaluate_default_out_is_the_model_folder_and_table_output(registry_copy, eval_data):
    r = cli("evaluate", "colours:1", eval_data, "--registry", registry_copy)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.stdout and "confusion matrix" in r.stdout and "blue" in r.stdout
    folder = registry_copy / "colours" / "1" / "evaluation"
    assert {p.name for p in folder.iterdir()} == {"metrics.json", "confusion_matrix.csv", "confusion_matrix.png",
                                                  "misclassified.csv", "misclassified.png", "reliability.png",
                                                  "risk_coverage.png", "report.html"}
    meta = json.loads((registry_copy / "colours" / "1" / "metadata.json").read_text())
    assert meta["evaluation"]["images"] == 18


def test_evaluate_split_root_uses_test(registry_copy, trained, tmp_path):
    root = tmp_path / "split"
    assert cli("split", trained.data, root, "--val", 0.25, "--test", 0.25).exit_code == 0
    report = evaluate_json(registry_copy, root, tmp_path / "out")
    assert report["data"].endswith("/test") and report["images"] == 9


def test_evaluate_skips_bad_files_with_a_warning(registry_copy, eval_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(eval_data, data)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    r = cli("evaluate", "colours", data, "--registry", registry_copy, "--out", tmp_path / "o", "--format", "json")
    assert r.exit_code == 0, r.output
    assert any("broken.jpg" in l for l in r.stderr.splitlines() if l.startswith("warning:"))
    assert json.loads(r.stdout)["images"] == 18


@pytest.mark.parametrize("case", ["unknown class", "missing", "unknown model"])
def test_evaluate_errors(registry_copy, tmp_path, case):
    data = tmp_path / "data"
    model = "colours"
    if case == "unknown class":
        make_tree(data, {"red": 2, "purple": 2})
    elif case == "unknown model":
        make_tree(data, {"red": 2, "blue": 2})
        model = "nope"
    line = error_line(cli("evaluate", model, data, "--registry", registry_copy))
    assert {"unknown class": "purple", "missing": "not found", "unknown model": "unknown model"}[case] in line
