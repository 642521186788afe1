"""`imgclf predict`: one result per image, in input order, in every format and with both backends."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import COLOURS, child_env, cli, error_line, noisy, table_rows


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Fresh images (not the training ones), in a deliberately unsorted order, with their true colours."""
    root = tmp_path_factory.mktemp("to classify")
    rng = np.random.default_rng(31)
    order = ["red", "blue", "green", "red", "green", "blue"]
    items = []
    for i, colour in enumerate(order):
        sub = root / ("nested" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        path = sub / f"z{9 - i}_{colour}.png"
        noisy("RGB", (24, 18), COLOURS[colour], rng).save(path)
        items.append((str(path), colour))
    return root, items


def predict(registry, *args, input=None, model="colours"):
    return cli("predict", "--model", model, "--registry", registry, *map(str, args), input=input)


def test_predict_files_json_in_input_order(trained, images):
    _, items = images
    r = predict(trained.registry, "--format", "json", "--backend", "keras", *[p for p, _ in items])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["path"] for row in rows] == [p for p, _ in items]
    assert [row["label"] for row in rows] == [c for _, c in items]
    for row in rows:
        assert row["error"] is None
        assert row["top_k"][0] == {"label": row["label"], "probability": row["confidence"]}
        assert len(row["top_k"]) == 3                                        # default --top-k 3
        probs = [t["probability"] for t in row["top_k"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)


def test_predict_jsonl_is_the_default_off_a_terminal(trained, images):
    _, items = images
    r = predict(trained.registry, "--backend", "keras", *[p for p, _ in items])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["path"], row["label"]) for row in rows] == items


def test_predict_csv(trained, images):
    _, items = images
    r = predict(trained.registry, "--format", "csv", "--top-k", 2, *[p for p, _ in items])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == ["path", "label", "confidence", "top_k", "error", "abstained"]
    assert [(row["path"], row["label"]) for row in rows] == items
    for row in rows:
        pairs = row["top_k"].split(";")
        assert len(pairs) == 2 and pairs[0].split(":")[0] == row["label"]
        assert float(row["confidence"]) == pytest.approx(float(pairs[0].split(":")[1]))
        assert row["error"] == "" and row["abstained"] == "false"


def test_predict_table(trained, images, tmp_path):
    _, items = images
    # a file name without a class name in it, so only the label column can say "red"
    photo = tmp_path / "photo.png"
    photo.write_bytes(open(items[0][0], "rb").read())
    r = predict(trained.registry, "--format", "table", "--top-k", 1, photo)
    assert r.exit_code == 0, r.output
    assert "confidence" in r.stdout
    rows = table_rows(r.stdout)
    labels = [row[1] for row in rows if row[1]]
    assert labels == [items[0][1]], r.stdout
    confidence = float(next(row[2] for row in rows if row[2]))
    top1 = next(row[3] for row in rows if row[3])
    assert top1 == f"{items[0][1]} {confidence:.3f}", r.stdout


@pytest.mark.parametrize("k, expected", [(1, 1), (2, 2), (10, 3)])
def test_top_k(trained, images, k, expected):
    _, items = images
    r = predict(trained.registry, "--format", "json", "--top-k", k, items[0][0])
    assert [len(row["top_k"]) for row in json.loads(r.stdout)] == [expected]


def test_top_k_zero_is_refused(trained, images):
    assert "--top-k" in error_line(predict(trained.registry, "--top-k", 0, images[1][0][0]))


def test_predict_a_folder_recursively(trained, images):
    root, items = images
    (root / "notes.txt").write_text("not an image")
    r = predict(trained.registry, "--format", "json", root)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert sorted(row["path"] for row in rows) == sorted(p for p, _ in items)   # no notes.txt
    assert {row["path"]: row["label"] for row in rows} == dict(items)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json", "table"])
def test_nothing_to_classify_is_an_error_not_a_silent_success(trained, tmp_path, fmt):
    empty = tmp_path / "no images here"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    r = predict(trained.registry, "--format", fmt, empty)
    assert r.exit_code == 1
    assert error_line(r) == f"error: nothing to classify: no image files (.jpg, .jpeg, .png, .bmp, .gif, .tif, " \
                            f".tiff, .webp) in {empty}"
    assert r.stdout == ""
    r = predict(trained.registry, "--format", fmt, "-", input="")
    assert r.exit_code == 1
    assert error_line(r) == "error: nothing to classify: no paths on stdin"
    assert r.stdout == ""


def test_a_data_folder_named_like_an_unknown_model_says_both(trained, tmp_path, monkeypatch):
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    r = predict(trained.registry, "x.png", model="pets")
    assert error_line(r) == (f"error: pets: folder has no metadata.json; not an imgclf model, and the registry "
                             f"{trained.registry} has no model of that name")


def test_predict_paths_from_stdin(trained, images):
    _, items = images
    stdin = "\n".join(p for p, _ in items) + "\n\n"
    r = predict(trained.registry, "--format", "jsonl", "-", input=stdin)
    assert r.exit_code == 0, r.output
    assert [(json.loads(l)["path"], json.loads(l)["label"]) for l in r.stdout.splitlines()] == items


def test_an_unreadable_image_gives_an_error_row_and_exit_code_1(trained, images, tmp_path):
    _, items = images
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    missing = tmp_path / "missing.png"
    paths = [items[0][0], str(bad), items[1][0], str(missing), items[2][0]]
    for fmt in ("json", "jsonl", "csv"):
        r = predict(trained.registry, "--format", fmt, *paths)
        assert r.exit_code == 1
        assert "2 image(s) could not be classified" in r.stderr
        if fmt == "json":
            rows = json.loads(r.stdout)
        elif fmt == "jsonl":
            rows = [json.loads(l) for l in r.stdout.splitlines()]
        else:
            rows = [dict(row, label=row["label"] or None, error=row["error"] or None)
                    for row in csv.DictReader(io.StringIO(r.stdout))]
        assert [row["path"] for row in rows] == paths
        assert [row["label"] for row in rows] == [items[0][1], None, items[1][1], None, items[2][1]]
        assert "not an image" in rows[1]["error"] or "cannot" in rows[1]["error"]
        assert "not found" in rows[3]["error"]


def test_keras_and_onnx_give_identical_labels(exported, images, trained):
    root, items = images
    results = {}
    for backend in ("keras", "onnx"):
        r = predict(exported.registry, "--format", "json", "--backend", backend, root)
        assert r.exit_code == 0, r.output
        results[backend] = json.loads(r.stdout)
    assert [r["label"] for r in results["keras"]] == [r["label"] for r in results["onnx"]]
    for k, o in zip(results["keras"], results["onnx"]):
        assert k["confidence"] == pytest.approx(o["confidence"], abs=1e-4)
    # the training images too (more of them)
    labels = {}
    for backend in ("keras", "onnx"):
        r = predict(exported.registry, "--format", "json", "--backend", backend, trained.data)
        labels[backend] = [row["label"] for row in json.loads(r.stdout)]
    assert labels["keras"] == labels["onnx"] and len(labels["keras"]) == 36


def test_standalone_onnx_file_as_model(exported, images, tmp_path):
    _, items = images
    lone = tmp_path / "lone.onnx"
    lone.write_bytes((exported.path / "model.onnx").read_bytes())
    r = predict(exported.registry, "--format", "json", items[0][0], model=lone)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["label"] == items[0][1]


def test_onnx_backend_without_export_is_a_clear_error(trained, images):
    line = error_line(predict(trained.registry, "--backend", "onnx", images[1][0][0]))
    assert "export" in line and "colours:1" in line


def test_predict_default_model_is_latest(trained, images):
    _, items = images
    r = cli("predict", "--registry", trained.registry, "--format", "json", items[0][0])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["label"] == items[0][1]


def test_predict_with_onnx_does_not_import_tensorflow(exported, images):
    _, items = images
    code = ("import sys, json; from typer.testing import CliRunner; from imgclf.cli import app; "
            f"r = CliRunner().invoke(app, ['predict', '--registry', {str(exported.registry)!r}, '--backend', "
            f"'onnx', '--format', 'json', {items[0][0]!r}]); "
            "print(json.dumps({'code': r.exit_code, 'out': r.stdout, 'tf': 'tensorflow' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["code"] == 0 and json.loads(res["out"])[0]["label"] == items[0][1]
    assert res["tf"] is False


def test_evaluate_batches_large_images_in_fewer_images_a_batch():
    """evaluate/compare (predict_probabilities): 64 images a batch up to 224 px, fewer above, so a 448 px
    model fits in memory (in batches of 64 it was killed at 23.8 GB)."""
    import numpy as np

    from imgclf.predict import predict_probabilities

    class Counting:
        class_names = ["a", "b"]

        def __init__(self):
            self.batches = []

        def probabilities(self, batch, calibrated=True):
            self.batches.append(len(batch))
            return np.full((len(batch), 2), 0.5, np.float32)

    small, large = Counting(), Counting()
    assert predict_probabilities(small, np.zeros((100, 224, 224, 3), np.uint8)).shape == (100, 2)
    assert predict_probabilities(large, np.zeros((40, 448, 448, 3), np.uint8)).shape == (40, 2)
    assert small.batches == [64, 36] and large.batches == [16, 16, 8]
