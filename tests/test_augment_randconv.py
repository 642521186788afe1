"""Issue 14: RandConv restyling (--randconv P; the `style` policy, the pretrained default): a random
convolution per batch changes texture, shading and colours and keeps shapes; validated with one line,
seeded, recorded in metadata.json, written offline by `imgclf augment`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_augment_option_refused, augmented_differences, cli, make_tree


def _augment(x, seed=3, **ops):
    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter

    return np.asarray(build_augmenter(AugmentConfig.from_options("none", **ops), seed)(x, training=True))


def _shapes(n=8, size=32):
    """n white images, each with a coloured square at another place (float32 NHWC 0..255)."""
    x = np.full((n, size, size, 3), 255.0, dtype="float32")
    for i in range(n):
        top = 2 + 2 * i
        x[i, top:top + 12, 4:16] = (200, 40 + 20 * i, 30)
    return x


def test_randconv_changes_the_look_keeps_the_range_and_the_shapes():
    x = _shapes()
    y = _augment(x, randconv=1.0)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 255
    changed = np.abs(y - x).mean(axis=(1, 2, 3))
    assert (changed > 1.0).sum() >= 6, changed  # alpha ~ U(0, 1): nearly every image visibly restyled
    # shapes kept: inside the square and outside it stay two different regions in every restyled image
    for i in np.flatnonzero(changed > 5.0):
        top = 2 + 2 * i
        inside = y[i, top + 3:top + 9, 7:13].mean(axis=(0, 1))
        outside = y[i, 24:30, 20:30].mean(axis=(0, 1))
        assert np.abs(inside - outside).max() > 5.0, (i, inside, outside)


def test_randconv_probability_and_seed():
    x = _shapes(16)
    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter

    assert build_augmenter(AugmentConfig.from_options("none", randconv=0.0), 1) is None  # off: nothing applied
    same = np.all(_augment(x, randconv=0.5) == x, axis=(1, 2, 3))
    assert 2 <= same.sum() <= 14, same  # about half the images pass untouched
    assert np.array_equal(_augment(x, seed=5, randconv=0.5), _augment(x, seed=5, randconv=0.5))
    assert not np.array_equal(_augment(x, seed=5, randconv=1.0), _augment(x, seed=6, randconv=1.0))


def test_randconv_works_on_grayscale_images():
    x = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 1)).astype("float32")
    y = _augment(x, randconv=1.0)
    assert y.shape == x.shape and not np.array_equal(y, x) and 0 <= y.min() and y.max() <= 255
    tiny = np.full((1, 2, 2, 3), 100.0, dtype="float32")  # too small to pad by mirroring: left as it is
    assert np.array_equal(_augment(tiny, randconv=1.0), tiny)


def test_the_style_policy_is_medium_plus_randconv_and_the_pretrained_default():
    from imgclf.config import AUGMENT_POLICIES, PRETRAINED_DEFAULTS

    style, medium = AUGMENT_POLICIES["style"], AUGMENT_POLICIES["medium"]
    assert style["randconv"] == 0.5 and {k: v for k, v in style.items() if k != "randconv"} == \
        {k: v for k, v in medium.items() if k != "randconv"}
    assert PRETRAINED_DEFAULTS["augment_policy"] == "style"
    assert all(p["randconv"] == 0.0 for name, p in AUGMENT_POLICIES.items() if name != "style")


@pytest.mark.parametrize("value", ["1.5", "-0.2"])
def test_bad_randconv_is_refused_with_one_line(tmp_path, value):
    assert_augment_option_refused(tmp_path, "--randconv", value,
                                  f"error: --randconv must be between 0.0 and 1.0, got {float(value)}")


def test_offline_randconv_writes_restyled_files_and_training_records_it(tmp_path):
    make_tree(tmp_path / "raw", {"red": 3, "green": 3}, size=(16, 16))
    r = cli("augment", tmp_path / "raw", tmp_path / "out", "--per-image", "2", "--policy", "none",
            "--randconv", "1")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["augmented"] == 12
    diffs = augmented_differences(tmp_path / "out")
    assert len(diffs) == 12 and sum(d > 1.0 for d in diffs) >= 9, diffs
    r = cli("train", tmp_path / "raw", "--arch", "mlp", "--epochs", "1", "--image-size", "16", "--patience", "0",
            "--augment", "none", "--randconv", "0.3", "--registry", tmp_path / "reg", "--name", "c",
            "--format", "json")
    assert r.exit_code == 0, r.output
    aug = json.loads((tmp_path / "reg" / "c" / "1" / "metadata.json").read_text())["config"]["augment"]
    assert aug["randconv"] == 0.3 and aug["rotate"] == 0.0
