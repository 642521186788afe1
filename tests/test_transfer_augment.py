"""Issue 3: MobileNet transfer learning (--weights none|PATH, two phases, export parity) and augmentation
(online: train split only, seeded; offline: `imgclf augment` file counts, val/test untouched)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import (assert_onnx_matches_keras, cli, error_line, image_files, make_tree, start_paused,
                      tree_digest, wait_for, write_small_backbone)

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
    # the export agrees with the saved model on the images, by our own check (not the exporter's report)
    r = cli("export", "m", "--registry", reg)
    assert r.exit_code == 0, r.output
    assert_onnx_matches_keras(reg / "m" / "1", image_files(colour_split), atol=1e-4)


def test_random_init_batchnorm_statistics_follow_the_data_in_a_short_run():
    """What BatchNorm momentum 0.9 is for. A random-init backbone in inference mode normalises with its moving
    statistics; while they sit at their initial values (mean 0, variance 1) the features shrink towards
    zero layer after layer, every image gets the same output and the model predicts one class (it did with
    Keras' default 0.999). After 30 steps (lr 0: only the statistics move) the inference-mode features of
    MobileNetV3-Small here are ~5% of the training-mode ones with 0.9, ~0.05% with 0.999."""
    import keras

    from imgclf.architectures import get_architecture
    from imgclf.config import TrainConfig

    keras.utils.set_random_seed(3)
    model = get_architecture("mobilenet_v3_small").build((96, 96, 3), 2,
                                                          TrainConfig(arch="mobilenet_v3_small", weights="none"))
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal([200, 60, 40], 30, (8, 96, 96, 3)), 0, 255).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 1] * 4), batch_size=8, epochs=30, verbose=0)
    backbone = model.get_layer("backbone")
    scaled = x / 127.5 - 1.0
    ratio = float(np.abs(np.asarray(backbone(scaled, training=False))).mean()
                  / np.abs(np.asarray(backbone(scaled, training=True))).mean())
    print(f"inference/training feature size after 30 steps: {ratio:.4f}")
    assert ratio > 0.02, ratio


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
    path = tmp_path_factory.mktemp("w") / "backbone.weights.h5"
    bb = write_small_backbone(path, seed=7)
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
    # the exported ONNX model agrees with Keras on the images (our check, not the exporter's report)
    r = cli("export", "ft", "--registry", reg)
    assert r.exit_code == 0, r.output
    assert_onnx_matches_keras(reg / "ft" / "1", image_files(colour_split), atol=1e-4)


def test_resume_across_the_head_to_fine_tune_boundary(tmp_path, colour_split, backbone_file, monkeypatch):
    """Killed as phase 2 begins (phase 1 done, its weights saved): the resumed run does not train the head
    again, starts fine-tuning from phase 1's weights and numbers its epochs on from there."""
    import signal

    import keras

    import imgclf.train
    from imgclf.architectures import get_architecture
    from imgclf.config import TrainConfig

    path, expected = backbone_file
    reg = tmp_path / "reg"
    marker = tmp_path / "fine-tune-begins"
    proc = start_paused("keras.Model.save_weights", marker, "train", colour_split,
                        "--arch", "mobilenet_v2", "--alpha", "0.35", "--weights", path, "--image-size", "96",
                        "--epochs", "1", "--fine-tune-epochs", "1", "--fine-tune-layers", "10", "--batch-size", "16",
                        "--patience", "0", "--registry", reg, "--name", "ft",
                        condition="str(args[1] if len(args) > 1 else kwargs.get('filepath', ''))"
                                  ".endswith('after-head.weights.h5')")
    wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (run,) = (reg / ".staging").iterdir()
    head_rows = list(csv.DictReader(open(run / "history.csv")))
    assert [(x["epoch"], x["phase"]) for x in head_rows] == [("1", "head")]
    head = get_architecture("mobilenet_v2").build((96, 96, 3), 2, TrainConfig(arch="mobilenet_v2", alpha=0.35,
                                                                             weights="none"))
    head.load_weights(run / "after-head.weights.h5")
    head = [np.array(w) for w in head.get_layer("probabilities").get_weights()]

    started = []                               # the head's weights when fine-tuning starts (spy only)

    def spy_logger(*args):
        logger = real_logger(*args)
        logger.on_train_begin = lambda logs=None: started.append(
            (getattr(logger.phase, "name", logger.phase), [np.array(w) for w in logger.model.get_layer("probabilities").get_weights()]))
        return logger

    real_logger = imgclf.train._EpochLogger
    monkeypatch.setattr(imgclf.train, "_EpochLogger", spy_logger)
    r = cli("train", "--resume", run.name, "--registry", reg, "--format", "json")
    assert r.exit_code == 0, r.output
    assert "fine-tuning the top 10 backbone layers" in r.stderr and "head epoch" not in r.stderr
    ((phase, weights),) = started                              # only phase 2 trained
    assert phase == "fine-tune" and all(np.array_equal(a, b) for a, b in zip(weights, head))
    rows = list(csv.DictReader(open(reg / "ft" / "1" / "history.csv")))
    assert [(x["epoch"], x["phase"]) for x in rows] == [("1", "head"), ("2", "fine-tune")]
    assert rows[0] == head_rows[0]
    assert float(rows[1]["lr"]) == pytest.approx(float(rows[0]["lr"]) / 10)
    model = keras.models.load_model(reg / "ft" / "1" / "model.keras", safe_mode=True, compile=False)
    assert np.array_equal(model.get_layer("backbone").get_weights()[0], expected[0])


# Keras' load_weights warns once per nested container it cannot match (76 UserWarnings for the alpha=0.5 file,
# whose arrays are as many as the backbone's, in other shapes) before it raises the error this test checks;
# the warnings say nothing the one-line error does not. (The cause would go with a shape check before
# load_weights in architectures/mobilenet.py.)
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
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
    # the same family with another width: as many arrays, other shapes
    r = cli("train", colour_split, "--arch", "mobilenet_v2", "--alpha", "0.5", "--weights", path,
            "--image-size", "96", "--registry", tmp_path / "reg")
    assert r.exit_code == 2
    line = error_line(r)
    assert line.startswith(f"error: --weights {path}: does not fit mobilenet_v2 alpha=0.5 without top"), line
    # a file that is not HDF5 at all
    text = tmp_path / "notes.weights.h5"
    text.write_text("these are not weights")
    r = cli("train", colour_split, "--arch", "mobilenet_v2", "--weights", text, "--image-size", "96",
            "--registry", tmp_path / "reg")
    assert r.exit_code == 2
    assert error_line(r).startswith(f"error: --weights {text}: not a readable HDF5 weights file"), r.stderr
    # our own architectures have no backbone to load
    for arch in ("cnn", "mlp"):
        r = cli("train", colour_split, "--arch", arch, "--weights", path, "--image-size", "16",
                "--registry", tmp_path / "reg")
        assert r.exit_code == 2
        assert error_line(r) == f"error: --weights applies to the pretrained architectures only, not {arch}"
    assert not (tmp_path / "reg").exists() or not any((tmp_path / "reg").glob("*/*/metadata.json"))


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
    # the channel repeat is in the exported graph too: one-channel input, same probabilities as Keras
    r = cli("export", "g", "--registry", reg)
    assert r.exit_code == 0, r.output
    import onnx
    (inp,) = onnx.load(str(reg / "g" / "1" / "model.onnx")).graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [96, 96, 1]
    assert_onnx_matches_keras(reg / "g" / "1", image_files(tmp_path / "gray"), atol=1e-4)


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
    with pytest.raises(UsageError, match="--policy must be one of none, pixel, light, medium, style, heavy, got 'extreme'"):
        AugmentConfig.from_options("extreme", option="--policy")
    with pytest.raises(UsageError, match="--flip must be one of"):
        AugmentConfig.from_options("none", flip="sideways")


@pytest.fixture(scope="module")
def uneven_split(tmp_path_factory):
    """Two colour classes, 3:1, split into train/val/test."""
    root = tmp_path_factory.mktemp("uneven")
    make_tree(root / "raw", {"green": 6, "red": 18}, mode="RGB", size=(20, 20), seed=8)
    r = cli("split", root / "raw", root / "split", "--val", "0.25", "--test", "0.2")
    assert r.exit_code == 0, r.output
    return root / "split"


def _image_set(batches) -> list:
    return sorted(np.asarray(x[i]).tobytes() for x, _ in batches for i in range(len(x)))


def test_online_augmentation_is_applied_to_train_only_and_never_saved(tmp_path, uneven_split, monkeypatch):
    import keras

    import imgclf.train

    made = []                                  # the datasets `fit` gets: spy on them, change nothing

    def spy(pixels, labels, *args, **kwargs):
        ds = real_make_dataset(pixels, labels, *args, **kwargs)
        made.append((kwargs.get("shuffle", False), np.array(pixels), ds, kwargs.get("batch_size", args[0] if args else None)))
        return ds

    real_make_dataset = imgclf.train.make_dataset
    monkeypatch.setattr(imgclf.train, "make_dataset", spy)
    reg = tmp_path / "reg"
    # --label-smoothing 0: history.csv's val_loss is then the same plain cross-entropy as metrics.val_loss
    args = ["--arch", "mlp", "--augment", "heavy", "--image-size", "16", "--epochs", "2", "--patience", "0",
            "--batch-size", "4", "--label-smoothing", "0", "--registry", reg, "--format", "json"]
    r = cli("train", uneven_split, *args, "--name", "aug", "--class-weight", "auto")
    assert r.exit_code == 0, r.output
    meta = json.loads((reg / "aug" / "1" / "metadata.json").read_text())
    assert meta["config"]["augment_policy"] == "heavy" and meta["config"]["augment"]["rotate"] == 30.0

    # training inputs: augmented, and differently in each epoch (not one frozen augmented copy)
    (train_pixels, train_ds, train_batch), = [(p, ds, b) for shuffled, p, ds, b in made if shuffled]
    original = sorted(np.asarray(p, dtype=np.float32).tobytes() for p in train_pixels)
    # the train set repeats and fit keeps one iterator: two epochs are the next two passes of it
    it, steps = iter(train_ds), -(-len(train_pixels) // train_batch)
    epoch_a, epoch_b = (_image_set([next(it) for _ in range(steps)]) for _ in range(2))
    assert len(epoch_a) == len(epoch_b) == len(original)
    assert not set(epoch_a) & set(original), "training images reached the model unaugmented"
    assert epoch_a != epoch_b, "every epoch got the same augmented images"
    # validation inputs: the images as they are
    val_sets = [(p, ds) for shuffled, p, ds, _ in made if not shuffled]
    assert val_sets
    for pixels, ds in val_sets:
        assert _image_set(ds) == sorted(np.asarray(p, dtype=np.float32).tobytes() for p in pixels)

    # val was not augmented during fit either: the last epoch's val_loss (as fit measured it) equals a
    # plain evaluation of the final weights on val/ after training (patience 0: no best-weights restore)
    rows = list(csv.DictReader(open(reg / "aug" / "1" / "history.csv")))
    assert float(rows[-1]["val_loss"]) == pytest.approx(meta["metrics"]["val_loss"], abs=1e-5)
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-6)

    # the saved model holds no augmentation: same output for the same input, every call and in training
    # mode with dropout off, and exactly what the bare architecture with the same weights computes
    from imgclf.architectures import get_architecture
    from imgclf.config import TrainConfig
    model = keras.models.load_model(reg / "aug" / "1" / "model.keras", safe_mode=True, compile=False)
    assert not [l.name for l in model._flatten_layers() if l.name.startswith("random") or l.name == "augmentation"]
    x = val_sets[0][0].astype(np.float32)
    out = np.asarray(model(x, training=False))
    assert np.array_equal(out, np.asarray(model(x, training=False)))
    bare = get_architecture("mlp").build((16, 16, 3), 2, TrainConfig(arch="mlp"))
    bare.set_weights(model.get_weights())
    assert np.array_equal(out, np.asarray(bare(x, training=False)))

    # class weights: inverse class frequency of the training split ...
    per_class = meta["dataset"]["train"]["per_class"]
    n = sum(per_class.values())
    assert per_class["red"] > 2 * per_class["green"]
    assert meta["class_weight"] == pytest.approx({c: n / (2 * k) for c, k in per_class.items()})
    assert meta["class_weight"]["green"] > 1.0 > meta["class_weight"]["red"]
    # ... and they reach `fit`: the same run without them (same seed, same batches) logs another loss
    r = cli("train", uneven_split, *args, "--name", "plain", "--class-weight", "none")
    assert r.exit_code == 0, r.output
    plain = list(csv.DictReader(open(reg / "plain" / "1" / "history.csv")))
    assert json.loads((reg / "plain" / "1" / "metadata.json").read_text())["class_weight"] is None
    assert abs(float(plain[0]["loss"]) - float(rows[0]["loss"])) > 1e-3, (plain[0], rows[0])


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
