"""Issue 34: random resized crop (--crop AREA): a random rectangle of at least AREA of the image, aspect
3/4..4/3, inside the image, resized back; seeded, off at inference, validated with one line, recorded in
metadata.json, written offline by `imgclf augment`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_augment_option_refused, augmented_differences, cli, make_tree


def _augment(x, seed=3, training=True, **ops):
    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter

    return np.asarray(build_augmenter(AugmentConfig.from_options("none", **ops), seed)(x, training=training))


def _ramps(n=16, size=64):
    """n images whose red channel is the column index and green the row index (float32 NHWC)."""
    cols = np.tile(np.arange(size, dtype="float32"), (size, 1))
    x = np.zeros((n, size, size, 3), dtype="float32")
    x[..., 0], x[..., 1] = cols, cols.T
    return x


def test_a_crop_is_a_rectangle_inside_the_image_of_at_least_the_area_resized_back():
    x = _ramps()
    y = _augment(x, crop=0.3)
    assert y.shape == x.shape
    for img in y:
        red, green = img[..., 0], img[..., 1]
        # each output row (column) reads one straight stretch of the input's columns (rows): a crop, resized
        width = red[:, -1] - red[:, 0]
        height = green[-1, :] - green[0, :]
        assert np.allclose(width, width[0], atol=1e-3) and np.allclose(height, height[0], atol=1e-3)
        fw, fh = width[0] / 63, height[0] / 63   # shares of the sides
        assert red.min() >= 0 and red.max() <= 63 and green.min() >= 0 and green.max() <= 63   # inside
        assert fw * fh >= 0.3 - 0.03, (fw, fh)
        assert 0.75 - 0.05 <= fw / fh <= 4 / 3 + 0.05 or min(fw, fh) > 0.95, (fw, fh)
    sizes = {round(float(img[0, -1, 0] - img[0, 0, 0])) for img in y}
    assert len(sizes) > 4, sizes          # each image its own crop


def test_crop_magnifies_an_object_and_is_seeded_and_off_at_inference():
    x = np.zeros((8, 64, 64, 3), dtype="float32")
    x[:, 24:40, 24:40] = 255.0
    y = _augment(x, crop=0.2)
    assert (y[..., 0] > 127).sum(axis=(1, 2)).max() > 1.5 * 256      # a crop that keeps the square enlarges it
    assert np.array_equal(_augment(x, seed=5, crop=0.2), _augment(x, seed=5, crop=0.2))
    assert not np.array_equal(_augment(x, seed=5, crop=0.2), _augment(x, seed=6, crop=0.2))
    assert np.array_equal(_augment(x, crop=0.2, training=False), x)


@pytest.mark.parametrize("value", ["0.05", "1.5", "-0.2"])
def test_bad_crop_is_refused_with_one_line(tmp_path, value):
    assert_augment_option_refused(tmp_path, "--crop", value,
                                  f"error: --crop must be 0 (off) or between 0.08 and 1.0, got {float(value)}")


def test_offline_crop_writes_cropped_files_and_training_records_it(tmp_path):
    make_tree(tmp_path / "raw", {"red": 3, "green": 3}, size=(32, 32))
    r = cli("augment", tmp_path / "raw", tmp_path / "out", "--per-image", "2", "--policy", "none", "--crop", "0.2")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["augmented"] == 12
    diffs = augmented_differences(tmp_path / "out", same_shape=True)   # resized back to the image's size
    assert len(diffs) == 12 and sum(d > 1.0 for d in diffs) >= 9, diffs
    r = cli("train", tmp_path / "raw", "--arch", "mlp", "--epochs", "1", "--image-size", "16", "--patience", "0",
            "--augment", "none", "--crop", "0.5", "--registry", tmp_path / "reg", "--name", "c", "--format", "json")
    assert r.exit_code == 0, r.output
    aug = json.loads((tmp_path / "reg" / "c" / "1" / "metadata.json").read_text())["config"]["augment"]
    assert aug["crop"] == 0.5 and aug["rotate"] == 0.0
