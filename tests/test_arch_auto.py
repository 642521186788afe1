"""Issue 14: `--arch auto` (the default) picks a pretrained MobileNetV2 for colour images of 32 px or more
(or when --weights is given) and the cnn otherwise; it says why on stderr, records the choice in
metadata.json, and stops with the two ways out when the ImageNet weights cannot be downloaded."""
from __future__ import annotations

import json
from urllib.error import URLError

import pytest

from conftest import SAMPLE_IMAGES, cli, error_line, make_tree, write_small_backbone
from imgclf import arch_choice
from imgclf.config import PRETRAINED_DEFAULTS, SCRATCH_DEFAULTS, AugmentConfig, TrainConfig, resolve
from imgclf.data.scan import Dataset, Sample
from imgclf.data.split import load_splits


def _dataset(mode: str, width: int, height: int, n: int = 10) -> Dataset:
    return Dataset("x", ["a", "b"], [Sample(f"{i}.png", i % 2, width, height, mode) for i in range(n)])


@pytest.mark.parametrize("mode,width,height,weights,chosen,words", [
    ("RGB", 128, 128, None, "mobilenet_v2", "128 px"),
    ("RGB", 640, 480, None, "mobilenet_v2", "480 px"),
    ("RGBA", 64, 64, None, "mobilenet_v2", "64 px"),         # the emoji: colour with alpha
    ("RGB", 48, 48, None, "mobilenet_v2", "48 px"),
    ("RGB", 32, 32, None, "mobilenet_v2", "32 px"),          # CIFAR-sized colour
    ("RGB", 24, 24, None, "cnn", "under 32 px"),
    ("L", 28, 28, None, "cnn", "grayscale"),
    ("LA", 256, 256, None, "cnn", "grayscale"),
    ("RGB", 28, 28, "/some/backbone.weights.h5", "mobilenet_v2", "--weights /some/backbone.weights.h5"),
    ("L", 28, 28, "imagenet", "mobilenet_v2", "--weights imagenet"),
    ("RGB", 640, 480, "none", "cnn", "--weights none"),
])
def test_auto_choice_and_reason(mode, width, height, weights, chosen, words):
    cfg = arch_choice.choose(TrainConfig(weights=weights), _dataset(mode, width, height))
    choice = cfg.arch_choice
    assert cfg.arch == chosen
    # (photos of 224 px or more also get "image_size" and "fine_tune" keys: tests/test_photo_defaults.py)
    assert {k: v for k, v in choice.items() if not k.startswith(("image_size", "fine_tune"))} == {
        "requested": "auto", "chosen": chosen, "reason": choice["reason"]}
    assert words in choice["reason"]


def test_a_given_arch_is_kept_and_recorded_as_given():
    cfg = arch_choice.choose(TrainConfig(arch="cnn"), _dataset("RGB", 640, 480))
    assert cfg.arch_choice == {"requested": "cnn", "chosen": "cnn",
                                                                   "reason": "--arch given"}
    assert arch_choice.describe(cfg.arch_choice) is None


def test_the_sample_images_quickstart_still_gets_the_cnn():
    choice = arch_choice.choose(TrainConfig(), load_splits(SAMPLE_IMAGES, 0.1, 42).train).arch_choice
    assert choice["chosen"] == "cnn" and "grayscale images (28 px typical)" in choice["reason"]


def test_defaults_follow_how_the_network_starts_and_given_options_win():
    scratch = resolve(TrainConfig(), pretrained=False)
    assert (scratch.epochs, scratch.lr, scratch.fine_tune_epochs, scratch.image_size) == (15, 1e-3, 0, None)
    assert scratch.augment_policy == "pixel" and scratch.augment.shift_px == 1  # whole-pixel shifts only
    assert scratch.augment.flip == "none" and scratch.augment.shift == scratch.augment.rotate == 0

    pre = resolve(TrainConfig(epochs=2, augment_overrides={"flip": "none"}), pretrained=True)
    assert pre.epochs == 2  # given
    assert pre.fine_tune_epochs == PRETRAINED_DEFAULTS["fine_tune_epochs"] > 0
    assert pre.image_size == PRETRAINED_DEFAULTS["image_size"]
    assert pre.augment_policy == PRETRAINED_DEFAULTS["augment_policy"] != SCRATCH_DEFAULTS["augment_policy"]
    assert pre.augment.active and pre.augment.flip == "none"  # --flip none over the policy

    given = resolve(TrainConfig(augment_policy="none", augment=AugmentConfig()), pretrained=True)
    assert not given.augment.active


@pytest.fixture(scope="module")
def colour_128(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("auto") / "photos", {"red": 8, "blue": 8}, mode="RGB",
                     size=(128, 128), ext=".jpg")


@pytest.fixture(scope="module")
def small_backbone(tmp_path_factory):
    """A MobileNetV2 backbone file (alpha 0.35, no top, random init: the test is about plumbing)."""
    path = tmp_path_factory.mktemp("bb") / "mnv2.weights.h5"
    write_small_backbone(path, seed=3)
    return path


def test_colour_128px_offline_stops_with_the_two_ways_out(tmp_path, colour_128, monkeypatch):
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        print("Downloading data from https://example.invalid/mobilenet_v2.h5")  # as Keras' get_file does
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(file_utils, "get_file", offline)
    reg = tmp_path / "reg"
    r = cli("train", colour_128, "--registry", reg, "--epochs", 1)
    line = error_line(r)
    assert r.stdout == "" and "Downloading data from" in r.stderr  # Keras' progress is a log, not data
    assert r.exit_code == 2
    assert "--arch auto chose mobilenet_v2" in line and "cannot download the ImageNet weights" in line
    assert "--weights PATH" in line and "--arch cnn" in line
    assert "--arch auto chose mobilenet_v2: colour images of 128 px" in r.stderr
    assert not (reg / "photos").exists()  # nothing else was trained instead


def test_colour_128px_with_a_weights_file_trains_mobilenet_and_records_the_choice(tmp_path, colour_128,
                                                                                  small_backbone):
    reg = tmp_path / "reg"
    r = cli("train", colour_128, "--registry", reg, "--weights", small_backbone, "--alpha", 0.35,
            "--image-size", 96, "--epochs", 1, "--fine-tune-epochs", 1, "--batch-size", 16, "--patience", 0,
            "--format", "json")
    assert r.exit_code == 0, r.output
    assert f"--arch auto chose mobilenet_v2: --weights {small_backbone}" in r.stderr
    meta = json.loads((reg / "photos" / "1" / "metadata.json").read_text())
    assert meta["arch"] == "mobilenet_v2" and meta["image_size"] == [96, 96]
    assert meta["arch_choice"]["requested"] == "auto" and meta["arch_choice"]["chosen"] == "mobilenet_v2"
    assert meta["config"]["arch"] == "mobilenet_v2"
    # the pretrained defaults filled what was not given
    assert meta["config"]["augment_policy"] == PRETRAINED_DEFAULTS["augment_policy"]
    assert meta["config"]["lr"] == PRETRAINED_DEFAULTS["lr"]


def test_grayscale_28px_trains_the_cnn_and_says_why(tmp_path):
    data = make_tree(tmp_path / "gray", {"dark": 8, "bright": 8}, mode="L", size=(28, 28))
    reg = tmp_path / "reg"
    r = cli("train", data, "--registry", reg, "--epochs", 1, "--patience", 0)
    assert r.exit_code == 0, r.output
    assert "--arch auto chose cnn: grayscale images (28 px typical)" in r.stderr
    meta = json.loads((reg / "gray" / "1" / "metadata.json").read_text())
    assert meta["arch"] == "cnn" and meta["image_size"] == [28, 28] and meta["channels"] == 1
    assert meta["arch_choice"] == {"requested": "auto", "chosen": "cnn",
                                   "reason": "grayscale images (28 px typical); pretrained networks are chosen "
                                             "for colour"}
    assert meta["config"]["epochs"] == 1 and meta["config"]["augment_policy"] == "none"


def test_weights_with_a_scratch_arch_is_still_refused(tmp_path, colour_128, small_backbone):
    r = cli("train", colour_128, "--registry", tmp_path / "reg", "--arch", "cnn", "--weights", small_backbone)
    assert "--weights applies to the pretrained architectures only, not cnn" in error_line(r)


def test_cnn_for_photos_standardises_each_image_pools_globally_and_exports(tmp_path):
    """From 64 px up the cnn standardises each image and pools globally (the photo fix of issue 14); small
    images keep the flatten head. The photo head must survive saving, safe-mode loading and ONNX export."""
    from imgclf.architectures import get_architecture
    import numpy as np
    cnn = get_architecture("cnn")
    small = {l.name for l in cnn.build((28, 28, 1), 3).layers}
    assert "flatten" in small and "standardize" not in small and "gap" not in small
    photo = cnn.build((64, 64, 3), 2)
    names = {l.name for l in photo.layers}
    assert {"standardize", "gap"} <= names and "flatten" not in names
    # the same image brighter and with more contrast gets (nearly: epsilon 1e-3) the same probabilities
    x = np.random.default_rng(0).uniform(60, 160, (1, 64, 64, 3)).astype("float32")
    assert np.allclose(photo(x, training=False), photo(1.4 * x - 30, training=False), atol=1e-2)

    data = make_tree(tmp_path / "pics", {"red": 6, "blue": 6}, mode="RGB", size=(64, 64))
    reg = tmp_path / "reg"
    r = cli("train", data, "--registry", reg, "--arch", "cnn", "--epochs", 1, "--patience", 0, "--batch-size", 4)
    assert r.exit_code == 0, r.output
    r = cli("export", "pics", "--registry", reg)
    assert r.exit_code == 0, r.output
    assert "top-1 agreement 1.000" in r.stderr
