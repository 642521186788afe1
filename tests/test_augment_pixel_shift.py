"""Issue 14: whole-pixel shifts (--shift-px, the `pixel` policy, the default from scratch): every pixel
keeps its value, what comes in is 0, online in training and offline in `imgclf augment`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import assert_augment_option_refused, cli, make_tree


def _offset(original: np.ndarray, moved: np.ndarray, k: int):
    """The (dx, dy) in -k..k with moved[y, x] == original[y + dy, x + dx] (0 outside), or None."""
    h, w = original.shape[:2]
    padded = np.zeros((h + 2 * k, w + 2 * k) + original.shape[2:], original.dtype)
    padded[k:k + h, k:k + w] = original
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            if np.array_equal(padded[k + dy:k + dy + h, k + dx:k + dx + w], moved):
                return dx, dy
    return None


def test_each_image_moves_by_whole_pixels_and_zero_comes_in():
    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter

    x = np.random.default_rng(0).integers(1, 255, (40, 9, 7, 3)).astype("float32")  # no 0 in the images
    aug = build_augmenter(AugmentConfig.from_options("none", shift_px=2), seed=5)
    y = np.asarray(aug(x, training=True))
    offsets = [_offset(a, b, 2) for a, b in zip(x, y)]
    assert None not in offsets, "an image was resampled, not moved by whole pixels"
    assert len(set(offsets)) >= 10  # drawn per image, in both directions
    assert {dx for dx, _ in offsets} == {dy for _, dy in offsets} == {-2, -1, 0, 1, 2}
    assert np.array_equal(np.asarray(aug(x, training=False)), x)  # inference: untouched


def test_the_pixel_policy_is_the_default_from_scratch_except_in_short_runs(tmp_path, monkeypatch):
    import imgclf.config

    data = make_tree(tmp_path / "gray", {"dark": 8, "bright": 8}, mode="L", size=(12, 12))

    def train(version, *options):
        r = cli("train", data, "--arch", "mlp", "--epochs", "2", "--patience", "0", "--registry", tmp_path / "reg",
                "--name", "m", "--format", "json", *options)
        assert r.exit_code == 0, r.output
        return json.loads((tmp_path / "reg" / "m" / str(version) / "metadata.json").read_text())["config"]

    short = train(1)  # 2 epochs of 1 step: a short run, no augmentation (and the plateau schedule)
    assert (short["augment_policy"], short["augment"]["shift_px"], short["lr_schedule"]) == ("none", 0, "plateau")
    assert (short["batch_size"], short["lr"]) == (64, 1e-3)
    monkeypatch.setattr(imgclf.config, "COSINE_MIN_STEPS", 2)  # now 2 steps are a long run
    import imgclf.train

    augmenters = []
    real = imgclf.train.make_dataset
    monkeypatch.setattr(imgclf.train, "make_dataset",
                        lambda *a, **k: augmenters.append(k.get("augment")) or real(*a, **k))
    config = train(2)
    # the training split (and only it) went through the shift layer
    assert [[layer.name for layer in aug.layers] for aug in augmenters if aug is not None] == [["random_pixel_shift"]]
    assert (config["augment_policy"], config["lr_schedule"]) == ("pixel", "cosine")
    assert (config["batch_size"], config["lr"]) == (128, 2e-3)  # long even at batch 128: 2 epochs of 1 step
    assert config["augment"] == {"flip": "none", "rotate": 0.0, "shift": 0.0, "zoom": 0.0, "brightness": 0.0,
                                 "contrast": 0.0, "hue": 0.0, "saturation": 0.0, "grayscale": 0.0,
                                 "shift_px": 1, "randconv": 0.0, "crop": 0.0}
    given = train(3, "--augment", "none")
    assert given["augment_policy"] == "none" and given["augment"]["shift_px"] == 0  # what the user says wins
    assert (train(4, "--batch-size", "4")["batch_size"], train(5, "--lr", "0.01")["lr"]) == (4, 0.01)


def test_offline_shift_px_writes_moved_copies(tmp_path):
    src = make_tree(tmp_path / "raw", {"dark": 2, "bright": 2}, mode="L", size=(10, 10))
    r = cli("augment", src, tmp_path / "out", "--per-image", "3", "--policy", "none", "--shift-px", "3")
    assert r.exit_code == 0, r.output
    offsets = []
    for original in sorted(src.glob("*/*.png")):
        a = np.asarray(Image.open(original))
        for k in (1, 2, 3):
            moved = tmp_path / "out" / original.parent.name / f"{original.stem}_aug{k}.png"
            b = np.asarray(Image.open(moved))
            assert b.shape == a.shape and Image.open(moved).mode == "L"
            offsets.append(_offset(a, b, 3))
    assert None not in offsets and len(set(offsets)) > 3


@pytest.mark.parametrize("value", ["-1", "65"])
def test_bad_shift_px_is_refused_with_one_line(tmp_path, value):
    assert_augment_option_refused(tmp_path, "--shift-px", value,
                                  f"error: --shift-px must be a whole number from 0 to 64, got {value}")
