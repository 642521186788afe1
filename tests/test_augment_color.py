"""Issue 14: colour augmentation (--hue, --saturation, --grayscale): online in training, offline in
`imgclf augment`, validated with one line, recorded in metadata.json."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import assert_augment_option_refused, cli, make_tree


def _augment(x, seed=3, **ops):
    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter

    return np.asarray(build_augmenter(AugmentConfig.from_options("none", **ops), seed)(x, training=True))


def _colours(n=6):
    """n solid 8x8 images: red, green, blue, yellow, orange, purple (float32 NHWC 0..255)."""
    rgb = np.array([(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 210, 20), (240, 140, 20), (140, 40, 180)],
                   dtype="float32")[:n]
    return np.repeat(np.repeat(rgb[:, None, None, :], 8, axis=1), 8, axis=2)


def _luma(x):
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def test_hue_turns_the_colours_and_keeps_the_brightness():
    x = _colours()
    out = _augment(x, hue=0.5)
    assert out.shape == x.shape and out.dtype == np.float32
    # the hue moved (by a different amount per image), the luma did not (up to clipping at 0/255)
    moved = np.abs(out - x).max(axis=(1, 2, 3))
    assert (moved > 5).sum() >= 5, moved
    assert np.abs(_luma(out) - _luma(x)).max() < 20
    soft = x * 0.4 + 76  # colours far from 0 and 255: nothing clips, so the luma is kept exactly
    assert np.abs(_luma(_augment(soft, hue=0.5)) - _luma(soft)).max() < 0.01
    assert np.abs(out.mean(axis=(1, 2)) - out[:, 0, 0]).max() < 1e-3  # one colour per image still
    # seeded: the same seed gives the same images, another seed others; not applied outside training
    assert np.array_equal(out, _augment(x, hue=0.5))
    assert not np.array_equal(out, _augment(x, seed=4, hue=0.5))
    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter
    assert np.array_equal(np.asarray(build_augmenter(AugmentConfig(hue=0.5), 3)(x, training=False)), x)


def test_saturation_scales_the_distance_from_gray_and_grayscale_drops_the_colour():
    x = _colours()
    gray_ref = _luma(x)
    out = _augment(x, saturation=0.9)
    chroma_in = np.abs(x - gray_ref[..., None]).max(axis=(1, 2, 3))
    chroma_out = np.abs(out - _luma(out)[..., None]).max(axis=(1, 2, 3))
    ratio = chroma_out / chroma_in
    assert ratio.max() - ratio.min() > 0.3 and ratio.min() < 0.9, ratio  # some duller, by differing amounts
    soft = x * 0.4 + 76
    assert np.abs(_luma(_augment(soft, saturation=0.9)) - _luma(soft)).max() < 0.01  # brightness kept
    # --grayscale 1: every image gray, 3 equal channels = the luma Pillow's convert("L") gives
    g = _augment(x, grayscale=1.0)
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
    pil = np.stack([np.asarray(Image.fromarray(im.astype("uint8")).convert("L")) for im in x]).astype("float32")
    assert np.abs(g[..., 0] - pil).max() <= 1.0
    # --grayscale 0.5 on many images: some turned gray, some kept their colour
    many = np.concatenate([x] * 20)
    half = _augment(many, grayscale=0.5)
    is_gray = np.abs(half[..., 0] - half[..., 1]).max(axis=(1, 2)) < 1e-3
    assert 0.25 < is_gray.mean() < 0.75, is_gray.mean()


def test_colour_ops_leave_grayscale_images_alone():
    x = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 1)).astype("float32")
    assert np.array_equal(_augment(x, hue=0.3, saturation=0.5, grayscale=1.0), x)


@pytest.mark.parametrize("option, value, message", [
    ("--hue", "0.7", "error: --hue must be between 0.0 and 0.5, got 0.7"),
    ("--saturation", "-0.1", "error: --saturation must be between 0.0 and 1.0, got -0.1"),
    ("--grayscale", "1.5", "error: --grayscale must be between 0.0 and 1.0, got 1.5"),
])
def test_bad_colour_values_are_refused_with_one_line(tmp_path, option, value, message):
    assert_augment_option_refused(tmp_path, option, value, message)


def test_offline_grayscale_and_hue_write_recoloured_files(tmp_path):
    make_tree(tmp_path / "raw", {"red": 3, "green": 3}, size=(12, 12))
    r = cli("augment", tmp_path / "raw", tmp_path / "gray", "--per-image", "1", "--policy", "none",
            "--grayscale", "1")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["augmented"] == 6
    for cls in ("red", "green"):
        for f in (tmp_path / "gray" / cls).glob("*_aug1.png"):
            a = np.asarray(Image.open(f).convert("RGB")).astype(int)
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all(), f
        orig = np.asarray(Image.open(tmp_path / "gray" / cls / "img_000.png").convert("RGB")).astype(int)
        assert np.abs(orig[..., 0] - orig[..., 1]).mean() > 50  # the originals keep their colour
    # half a turn of hue at most: red files come out with other hues (green or blue channel now dominant
    # in some), the image's brightness kept
    r = cli("augment", tmp_path / "raw", tmp_path / "hue", "--per-image", "4", "--policy", "none", "--hue", "0.5")
    assert r.exit_code == 0, r.output
    outs = [np.asarray(Image.open(f).convert("RGB")).astype(float) for f in (tmp_path / "hue" / "red").glob("*_aug*")]
    assert len(outs) == 12
    not_red = [a for a in outs if a[..., 0].mean() < max(a[..., 1].mean(), a[..., 2].mean())]
    assert len(not_red) >= 3, [a.mean(axis=(0, 1)) for a in outs]


def test_online_colour_options_reach_training_and_metadata(tmp_path, monkeypatch):
    import imgclf.train

    make_tree(tmp_path / "raw", {"red": 8, "green": 8}, size=(12, 12))
    made = []

    def spy(pixels, labels, *args, **kwargs):
        ds = real(pixels, labels, *args, **kwargs)
        if kwargs.get("shuffle"):
            made.append(ds)
        return ds

    real = imgclf.train.make_dataset
    monkeypatch.setattr(imgclf.train, "make_dataset", spy)
    r = cli("train", tmp_path / "raw", "--arch", "mlp", "--epochs", "1", "--image-size", "12", "--patience", "0",
            "--augment", "none", "--grayscale", "1", "--hue", "0.1", "--saturation", "0.2",
            "--registry", tmp_path / "reg", "--name", "c", "--format", "json")
    assert r.exit_code == 0, r.output
    aug = json.loads((tmp_path / "reg" / "c" / "1" / "metadata.json").read_text())["config"]["augment"]
    assert (aug["hue"], aug["saturation"], aug["grayscale"]) == (0.1, 0.2, 1.0)
    # --grayscale 1: every training image reached the model gray
    (ds,) = made
    for x, _ in ds.take(3):  # the train set repeats (one iterator per fit): a few of its batches
        x = np.asarray(x)
        assert np.abs(x[..., 0] - x[..., 1]).max() < 1e-3 and np.abs(x[..., 1] - x[..., 2]).max() < 1e-3
