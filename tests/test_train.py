"""`imgclf train`: a new, complete registry version; clear errors for data it cannot use."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import cli, error_line, make_tree

REQUIRED_METADATA = {"name", "version", "created", "arch", "class_names", "preprocessing", "image_size",
                     "channels", "config", "seed", "dataset", "metrics", "library_versions"}


def history(path: Path):
    with open(path / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def gray_data(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("gray") / "gray", {"dark": 10, "bright": 10}, mode="L", seed=2)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_train_plain_tree_makes_a_complete_version(tmp_path, gray_data, arch):
    registry = tmp_path / "reg"
    r = cli("train", gray_data, "--registry", registry, "--arch", arch, "--epochs", 2, "--image-size", 16,
            "--patience", 0, "--seed", 7)
    assert r.exit_code == 0, r.output
    version = registry / "gray" / "1"                     # name: the data folder's name
    assert {p.name for p in version.iterdir()} >= {"model.keras", "metadata.json", "history.csv"}
    assert str(version) in r.stderr and "gray:1" in r.stdout
    meta = json.loads((version / "metadata.json").read_text())
    assert REQUIRED_METADATA <= set(meta)
    assert meta["name"] == "gray" and meta["version"] == 1 and meta["arch"] == arch
    assert meta["class_names"] == ["bright", "dark"]      # sorted folder names = output index order
    assert meta["channels"] == 1 and meta["image_size"] == [16, 16]   # grayscale data -> one channel
    pre = meta["preprocessing"]
    assert pre["image_size"] == [16, 16] and pre["channels"] == 1 and pre["input_range"] == [0, 255]
    assert meta["config"]["seed"] == 7 and meta["seed"] == 7 and meta["config"]["epochs"] == 2
    assert meta["config"]["arch"] == arch
    assert meta["metrics"]["epochs_run"] == 2 and 0 <= meta["metrics"]["val_accuracy"] <= 1
    assert "keras" in meta["library_versions"] and "python" in meta["library_versions"]
    ds = meta["dataset"]
    assert ds["val_held_out"] is True and ds["skipped"] == 0
    assert ds["train"]["images"] + ds["val"]["images"] == 20
    assert ds["val"]["per_class"] == {"bright": 1, "dark": 1}        # 10% of each class, stratified
    rows = history(version)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(r["loss"] and r["val_loss"] for r in rows)
    # each epoch's time split: its training steps and its validation pass, within the whole
    # (to 0.01 s: a tiny model's steps or validation can round to 0.00; the first epoch traces its graph)
    assert float(rows[0]["train_seconds"]) > 0
    assert all(0 <= float(r["train_seconds"]) and 0 <= float(r["val_seconds"])
               and float(r["train_seconds"]) + float(r["val_seconds"]) <= float(r["seconds"]) + 0.01 for r in rows)
    assert list(registry.glob(".staging/*")) == []        # the run's staging folder became the version

    import keras
    model = keras.models.load_model(version / "model.keras", safe_mode=True, compile=False)
    assert tuple(model.input_shape) == (None, 16, 16, 1) and tuple(model.output_shape) == (None, 2)


def test_train_split_root_in_colour(tmp_path, colour_data):
    split_root = tmp_path / "split"
    assert cli("split", colour_data, split_root, "--val", 0.2, "--test", 0.2).exit_code == 0
    registry = tmp_path / "reg"
    r = cli("train", split_root, "--registry", registry, "--epochs", 2, "--image-size", 16, "--patience", 0,
            "--name", "rgb-split", "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["name"] == "rgb-split" and out["version"] == 1
    meta = json.loads((Path(out["path"]) / "metadata.json").read_text())
    assert meta["arch"] == "cnn" and meta["channels"] == 3           # colour data -> three channels
    assert meta["class_names"] == ["blue", "green", "red"]
    ds = meta["dataset"]
    assert ds["val_held_out"] is False
    assert ds["train"]["per_class"] == {"blue": 8, "green": 8, "red": 8}
    assert ds["val"]["images"] == 6 and ds["test"]["images"] == 6
    assert {"val_accuracy", "test_accuracy", "test_loss"} <= set(meta["metrics"])
    assert len(history(Path(out["path"]))) == 2


def test_train_second_run_gets_version_two(tmp_path, gray_data):
    registry = tmp_path / "reg"
    for expected in (1, 2):
        r = cli("train", gray_data, "--registry", registry, "--arch", "mlp", "--epochs", 1, "--image-size", 16,
                "--patience", 0, "--name", "g", "--format", "json", "--channels", 3)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["version"] == expected
    assert json.loads((registry / "g" / "2" / "metadata.json").read_text())["channels"] == 3   # --channels wins


@pytest.mark.parametrize("case, args, words", [
    ("missing", [], ["folder not found"]),
    ("empty", [], ["no class folders"]),
    ("one class", [], ["only one class"]),
    ("all images broken", [], ["no usable images"]),
    ("bad name", ["--name", "../x"], ["../x", "invalid model name"]),
    ("absolute name", ["--name", "/etc/x"], ["invalid model name"]),
    ("bad epochs", ["--epochs", "0"], ["--epochs"]),
    ("bad image size", ["--image-size", "3"], ["--image-size"]),
])
def test_train_errors_are_one_line_without_traceback(tmp_path, case, args, words):
    data = tmp_path / "data"
    if case == "empty":
        data.mkdir()
    elif case == "one class":
        make_tree(data, {"only": 4})
    elif case == "all images broken":
        for cls in ("a", "b"):
            (data / cls).mkdir(parents=True)
            (data / cls / "x.png").write_text("no")
    elif case != "missing":
        make_tree(data, {"a": 3, "b": 3})
    registry = tmp_path / "reg"
    r = cli("train", data, "--registry", registry, "--epochs", 1, "--image-size", 16, *args)
    line = error_line(r)
    assert len(r.stderr.strip().splitlines()) <= 3, r.stderr      # the error, maybe a warning or two
    for w in words:
        assert w in line, line
    if case in ("missing", "empty", "one class"):
        assert str(data) in line
    # nothing half-made was left behind as a model
    listing = cli("models", "list", "--registry", registry, "--format", "json")
    assert json.loads(listing.stdout)["models"] == [] and json.loads(listing.stdout)["unfinished"] == []
