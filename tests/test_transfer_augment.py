"""Issue 3: MobileNet transfer learning (--weights none|PATH, two phases, export parity) and augmentation
(online: train split only, seeded; offline: `imgclf augment` file counts, val/test untouched)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from conftest import cli, error_line, make_tree, tree_digest

MOBILENETS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]


@pytest.fixture(scope="module")
def colour_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("mn")
    make_tree(root / "raw", {"red": 10, "green": 10}, mode="RGB", size=(24, 24))
    r = cli("split", root / "raw", root / "split", "--val", "0.2", "--test", "0.2")
    assert r.exit_code == 0, r.output
    return root / "split"


@pytest.mark.parametrize("arch", MOBILENETS)
def test_each_mobilenet_builds_and_trains_with_random_weights(tmp_path, colour_split, arch):
    reg = tmp_path / "reg"
    r = cli("train", colour_split, "--arch", arch, "--weights", "none", "--image-size", "96", "--epochs", "1",
            "--batch-size", "16", "--patience", "0", "--registry", reg, "--name", "m", "--format", "json")
    assert r.exit_code == 0, r.output
    meta = json.loads((reg / "m" / "1" / "metadata.json").read_text())
    assert meta["arch"] == arch and meta["image_size"] == [96, 96] and meta["channels"] == 3
    assert meta["config"]["weights"] == "none"
    rows = list(csv.DictReader(open(reg / "m" / "1" / "history.csv")))
    assert [r_["phase"] for r_ in rows] == ["train"]  # random init: the whole network trains at once
    import keras
    model = keras.models.load_model(reg / "m" / "1" / "model.keras", safe_mode=True, compile=False)
    backbone = model.get_layer("backbone")
    assert backbone.trainable
    # BatchNorm statistics must follow the data within a short run (Keras' default 0.999 did not:
    # a random-init model predicted one class at inference)
    assert {l.momentum for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)} == {0.9}


def test_mobilenet_default_size_is_224_and_other_sizes_are_refused(tmp_path, colour_split):
    r = cli("train", colour_split, "--arch", "mobilenet_v2", "--weights", "none", "--image-size", "100",
            "--registry", tmp_path / "reg")
    line = error_line(r)
    assert "--image-size 100" in line and "96, 128, 160, 192, 224" in line
    from imgclf.architectures import get_architecture
    assert get_architecture("mobilenet_v3_large").default_size == 224


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A backbone weights file written from a random-init MobileNetV2 (alpha 0.35, no top)."""
    import keras
    path = tmp_path_factory.mktemp("w") / "backbone.weights.h5"
    keras.utils.set_random_seed(7)
    bb = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None)
    bb.save_weights(path)
    return path, [np.asarray(w) for w in bb.get_weights()]


def test_weights_path_loads_every_backbone_layer_and_two_phases_land_in_history(tmp_path, colour_split,
                                                                                  backbone_file):
    import keras
    path, expected = backbone_file
    reg = tmp_path / "reg"
    r = cli("train", colour_split, "--arch", "mobilenet_v2", "--alpha", "0.35", "--weights", path,
            "--image-size", "96", "--epochs", "1", "--fine-tune-epochs", "1", "--fine-tune-layers", "10",
            "--batch-size", "16", "--patience", "0", "--registry", reg, "--name", "ft")
    assert r.exit_code == 0, r.output
    assert "fine-tuning the top 10 backbone layers" in r.stderr
    rows = list(csv.DictReader(open(reg / "ft" / "1" / "history.csv")))
    assert [(x["epoch"], x["phase"]) for x in rows] == [("1", "head"), ("2", "fine-tune")]
    assert float(rows[1]["lr"]) == pytest.approx(float(rows[0]["lr"]) / 10)
    model = keras.models.load_model(reg / "ft" / "1" / "model.keras", safe_mode=True, compile=False)
    loaded = model.get_layer("backbone").get_weights()
    # phase 1 never touches the backbone; phase 2 only the top 10 layers: the first conv is as in the file
    assert np.array_equal(loaded[0], expected[0])
    # the exported ONNX model agrees with Keras on the model's own images
    r = cli("export", "ft", "--registry", reg)
    assert r.exit_code == 0, r.output
    meta = json.loads((reg / "ft" / "1" / "metadata.json").read_text())
    assert meta["onnx"]["top1_agreement"] == 1.0 and meta["onnx"]["max_abs_diff"] <= 1e-4
    assert meta["onnx"]["check_source"] == "images"


def test_mismatched_weights_file_is_a_clear_error(tmp_path, colour_split, backbone_file):
    path, _ = backbone_file
    r = cli("train", colour_split, "--arch", "mobilenet_v3_small", "--weights", path, "--image-size", "96",
            "--registry", tmp_path / "reg")
    line = error_line(r)
    assert str(path) in line and "does not fit mobilenet_v3_small" in line
    assert not (tmp_path / "reg" / ".staging").exists() or not any((tmp_path / "reg" / ".staging").iterdir())
    r = cli("train", colour_split, "--arch", "mobilenet_v2", "--weights", tmp_path / "missing.h5",
            "--image-size", "96", "--registry", tmp_path / "reg")
    assert "file not found" in error_line(r)


def test_grayscale_data_works_with_mobilenet(tmp_path):
    make_tree(tmp_path / "gray", {"dark": 6, "bright": 6}, mode="L", size=(20, 20))
    reg = tmp_path / "reg"
    r = cli("train", tmp_path / "gray", "--arch", "mobilenet_v3_small", "--weights", "none", "--image-size", "96",
            "--epochs", "1", "--patience", "0", "--registry", reg, "--name", "g")
    assert r.exit_code == 0, r.output
    meta = json.loads((reg / "g" / "1" / "metadata.json").read_text())
    assert meta["channels"] == 1  # repeated to 3 channels inside the graph
    r = cli("predict", tmp_path / "gray" / "dark", "--model", "g", "--registry", reg, "--backend", "keras",
            "--format", "json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 6


# ------------------------------------------------------------------------------------------ augmentation

def test_online_augmentation_is_seeded():
    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter

    cfg = AugmentConfig.from_options("heavy")
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    a = np.asarray(build_augmenter(cfg, 5)(x, training=True))
    b = np.asarray(build_augmenter(cfg, 5)(x, training=True))
    c = np.asarray(build_augmenter(cfg, 6)(x, training=True))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, x)
    assert build_augmenter(AugmentConfig.from_options("none"), 5) is None


def test_flip_none_overrides_the_policy_and_bad_values_are_refused(tmp_path):
    from imgclf.config import AugmentConfig
    from imgclf.errors import UsageError
    assert AugmentConfig.from_options("heavy", flip="none").flip == "none"
    for option, value in (("--augment", "extreme"), ("--flip", "sideways")):
        r = cli("train", tmp_path, option, value)
        assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.stderr, r.stderr
    # the library names the option the user typed
    with pytest.raises(UsageError, match="--policy must be one of none, light, medium, heavy, got 'extreme'"):
        AugmentConfig.from_options("extreme", option="--policy")
    with pytest.raises(UsageError, match="--flip must be one of"):
        AugmentConfig.from_options("none", flip="sideways")


def test_online_augmentation_never_touches_val_or_the_saved_model(tmp_path, colour_split):
    reg = tmp_path / "reg"
    r = cli("train", colour_split, "--arch", "mlp", "--augment", "heavy", "--image-size", "16", "--epochs", "2",
            "--patience", "0", "--registry", reg, "--name", "aug", "--class-weight", "auto")
    assert r.exit_code == 0, r.output
    meta = json.loads((reg / "aug" / "1" / "metadata.json").read_text())
    assert meta["config"]["augment_policy"] == "heavy" and meta["config"]["augment"]["rotate"] == 30.0
    assert meta["class_weight"] == {"green": 1.0, "red": 1.0}
    import keras
    model = keras.models.load_model(reg / "aug" / "1" / "model.keras", safe_mode=True, compile=False)
    assert not any(l.name.startswith("random") or l.name == "augmentation" for l in model.layers)
    # val metrics at the end of training equal a plain evaluation of the saved model on val/:
    # val was not augmented
    val_dir = tmp_path / "valonly"
    import shutil
    shutil.copytree(colour_split / "val", val_dir)
    r = cli("evaluate", "aug", val_dir, "--registry", reg, "--backend", "keras", "--format", "json",
            "--out", tmp_path / "ev")
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-6)


def test_offline_augment_per_image_writes_expected_files_and_leaves_val_test_alone(tmp_path, colour_split):
    before = tree_digest(colour_split)
    dest = tmp_path / "aug"
    r = cli("augment", colour_split, dest, "--per-image", "2", "--policy", "medium", "--flip", "none",
            "--seed", "3")
    assert r.exit_code == 0, r.output
    assert tree_digest(colour_split) == before  # SRC untouched
    out = json.loads(r.stdout)
    n_train = sum(1 for _ in (colour_split / "train").rglob("*.png"))
    assert out["originals"] == n_train and out["augmented"] == 2 * n_train
    names = sorted(p.name for p in (dest / "train" / "red").iterdir())
    assert any(n.endswith("_aug1.png") for n in names) and any(n.endswith("_aug2.png") for n in names)
    assert len(names) == 3 * len(list((colour_split / "train" / "red").iterdir()))
    for split in ("val", "test"):
        assert tree_digest(dest / split) == tree_digest(colour_split / split)
    # same seed, same pixels
    r2 = cli("augment", colour_split, tmp_path / "aug2", "--per-image", "2", "--policy", "medium",
             "--flip", "none", "--seed", "3")
    assert r2.exit_code == 0
    contents = lambda root: {k: v[:2] for k, v in tree_digest(root).items()}  # noqa: E731  (not mtimes)
    assert contents(dest / "train") == contents(tmp_path / "aug2" / "train")


def test_offline_augment_target_per_class_balances(tmp_path):
    make_tree(tmp_path / "raw", {"red": 3, "green": 7}, mode="RGB", size=(16, 16))
    r = cli("augment", tmp_path / "raw", tmp_path / "out", "--target-per-class", "8", "--rotate", "10",
            "--policy", "none")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out" / "red").iterdir())) == 8
    assert len(list((tmp_path / "out" / "green").iterdir())) == 8
    r = cli("augment", tmp_path / "raw", tmp_path / "out", "--target-per-class", "8")
    assert "not empty" in error_line(r)
    r = cli("augment", tmp_path / "raw", tmp_path / "out3", "--per-image", "1", "--target-per-class", "8")
    assert "exactly one of" in error_line(r)
