"""Issue 34: the pretrained default reads photos (typical short side of 224 px or more) at 224 px instead of
160, and under 1,000 training photos at 384 px with deeper and longer fine-tuning, so a small object anywhere
in the frame keeps its detail; smaller colour images (emoji at 64 px) keep 160, a given --image-size or
fine-tuning option wins, and the choice is said on stderr and recorded in metadata.json."""
from __future__ import annotations

import json

import pytest

from conftest import cli, make_tree, write_small_backbone
from imgclf import arch_choice
from imgclf.config import PHOTO_IMAGE_SIZE, PHOTO_SMALL_SET, PRETRAINED_DEFAULTS, TrainConfig, resolve
from imgclf.data.scan import Dataset, Sample

SMALL_SIZE = PHOTO_SMALL_SET["image_size"]


def _dataset(width: int, height: int, mode: str = "RGB", n: int = 10) -> Dataset:
    return Dataset("x", ["a", "b"], [Sample(f"{i}.jpg", i % 2, width, height, mode) for i in range(n)])


@pytest.mark.parametrize("arch,weights,width,height,size", [
    ("auto", None, 640, 480, SMALL_SIZE),            # a few photos: PHOTO_SMALL_SET's size
    ("auto", "imagenet", 300, 224, SMALL_SIZE),      # from 224 px typical on
    ("mobilenet_v2", None, 640, 480, SMALL_SIZE),    # a pretrained network named with --arch: the same
    ("auto", None, 64, 64, None),             # emoji-sized colour: the pretrained default's 160 px
    ("auto", None, 200, 200, None),
    ("auto", "none", 640, 480, None),         # from scratch: the cnn picks its own size
    ("cnn", None, 640, 480, None),
])
def test_photo_size_by_the_data(arch, weights, width, height, size):
    given = TrainConfig(arch=arch, weights=weights)
    cfg = arch_choice.choose(given, _dataset(width, height))
    choice = cfg.arch_choice
    assert cfg.image_size == size and given.image_size is None and given.arch_choice is None  # a new object
    assert choice.get("image_size") == size
    if size:
        assert f"{min(width, height)} px typical" in choice["image_size_reason"]
        assert "--image-size 160" in (arch_choice.describe(choice) or "--image-size 160")


def test_a_given_image_size_wins():
    cfg = arch_choice.choose(TrainConfig(image_size=160), _dataset(640, 480))
    choice = cfg.arch_choice
    assert cfg.image_size == 160 and "image_size" not in choice


def test_smaller_images_keep_the_pretrained_default():
    cfg = resolve(arch_choice.choose(TrainConfig(), _dataset(64, 64, "RGBA")), pretrained=True, n_train=10)
    assert cfg.image_size == PRETRAINED_DEFAULTS["image_size"] == 160


def test_imgclf_train_on_a_few_colour_photos_reads_them_larger_and_fine_tunes_deeper(tmp_path):
    """`imgclf train` on a folder of 12 colour photos of 320x240: PHOTO_SMALL_SET's size and fine-tuning depth,
    said on stderr and in metadata.json."""
    data = make_tree(tmp_path / "photos", {"red": 6, "blue": 6}, mode="RGB", size=(320, 240), seed=3)
    weights = tmp_path / "bb.weights.h5"
    write_small_backbone(weights, seed=3)
    r = cli("train", data, "--weights", weights, "--alpha", 0.35, "--epochs", 1, "--fine-tune-epochs", 0, "--batch-size", 4,
            "--registry", tmp_path / "reg", "--name", "p", "--format", "json")
    assert r.exit_code == 0, r.output
    assert f"read at {SMALL_SIZE} px" in r.stderr and f"images {SMALL_SIZE}x{SMALL_SIZE}x3" in r.stderr
    meta = json.loads((tmp_path / "reg" / "p" / "1" / "metadata.json").read_text())
    assert meta["preprocessing"]["image_size"] == [SMALL_SIZE, SMALL_SIZE]
    assert meta["arch_choice"]["image_size"] == SMALL_SIZE and meta["arch_choice"]["chosen"] == "mobilenet_v2"
    assert meta["config"]["augment_policy"] == "style"
    # 12 photos: a small set, so the backbone fine-tunes deeper (the epochs were given)
    assert meta["config"]["fine_tune_layers"] == PHOTO_SMALL_SET["fine_tune_layers"]
    assert meta["config"]["fine_tune_epochs"] == 0
    assert meta["arch_choice"]["fine_tune"] == {"fine_tune_layers": PHOTO_SMALL_SET["fine_tune_layers"]}
    assert f"--fine-tune-layers {PHOTO_SMALL_SET['fine_tune_layers']:g}" in r.stderr


@pytest.mark.parametrize("width,n,given,deeper", [
    (640, 20, {}, True),                                          # a few photos: deeper and longer
    (640, PHOTO_SMALL_SET["images"] - 1, {}, True),
    (640, PHOTO_SMALL_SET["images"], {}, False),                  # enough photos: the pretrained default's
    (64, 20, {}, False),                                          # emoji-sized colour images: unchanged
    (640, 20, {"fine_tune_layers": 0.3}, "epochs only"),          # what the user gives wins
    (640, 20, {"fine_tune_layers": 0.3, "fine_tune_epochs": 4}, False),
])
def test_small_photo_sets_fine_tune_deeper_and_longer(width, n, given, deeper):
    cfg = resolve(arch_choice.choose(TrainConfig(**given), _dataset(width, 480, n=n)), pretrained=True, n_train=n)
    want_layers = PHOTO_SMALL_SET["fine_tune_layers"] if deeper is True else \
        given.get("fine_tune_layers", PRETRAINED_DEFAULTS["fine_tune_layers"])
    want_epochs = PHOTO_SMALL_SET["fine_tune_epochs"] if deeper else \
        given.get("fine_tune_epochs", PRETRAINED_DEFAULTS["fine_tune_epochs"])
    assert (cfg.fine_tune_layers, cfg.fine_tune_epochs) == (want_layers, want_epochs)
    assert ("fine_tune" in cfg.arch_choice) == bool(deeper)
    if deeper:
        assert "training photos" in arch_choice.describe(cfg.arch_choice)
    size = (SMALL_SIZE if n < PHOTO_SMALL_SET["images"] else PHOTO_IMAGE_SIZE) if width >= 224 else 160
    assert cfg.image_size == size and cfg.arch_choice.get("image_size") == (size if width >= 224 else None)


@pytest.mark.parametrize("size,allowed", [(224, True), (384, True), (448, True), (300, False), (512, False)])
def test_larger_photo_sizes_are_allowed_for_mobilenet(size, allowed):
    """--image-size 288-448 for small objects in photos (docs/benchmarks.md, "Photo defaults"); others refused."""
    from imgclf.architectures import get_architecture
    from imgclf.errors import UsageError
    from imgclf.train import choose_spec

    arch = get_architecture("mobilenet_v2")
    cfg = TrainConfig(arch="mobilenet_v2", image_size=size)
    if allowed:
        assert choose_spec(cfg, arch, _dataset(640, 480)).image_size == (size, size)
    else:
        with pytest.raises(UsageError, match=f"--image-size {size} is not allowed"):
            choose_spec(cfg, arch, _dataset(640, 480))


def test_a_448_px_mobilenet_builds_and_is_fully_convolutional():
    """The backbone takes the larger sizes (random init: no weights file needed) and pools to one vector."""
    from imgclf.architectures import get_architecture

    cfg = TrainConfig(arch="mobilenet_v2", weights="none", alpha=0.35)
    model = get_architecture("mobilenet_v2").build((448, 448, 3), 2, cfg)
    assert model.get_layer("gap").output.shape[-1] == 1280 and model.output.shape[-1] == 2
