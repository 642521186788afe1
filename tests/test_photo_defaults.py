"""Issue 34: the pretrained default reads photos (typical short side of 224 px or more) at 224 px instead of
160, so a small object anywhere in the frame keeps its detail; smaller colour images (emoji at 64 px) keep
160, a given --image-size wins, and the choice is said on stderr and recorded in metadata.json."""
from __future__ import annotations

import json

import pytest

from conftest import cli, make_tree, write_small_backbone
from imgclf import arch_choice
from imgclf.config import PRETRAINED_DEFAULTS, TrainConfig, resolve
from imgclf.data.scan import Dataset, Sample


def _dataset(width: int, height: int, mode: str = "RGB", n: int = 10) -> Dataset:
    return Dataset("x", ["a", "b"], [Sample(f"{i}.jpg", i % 2, width, height, mode) for i in range(n)])


@pytest.mark.parametrize("arch,weights,width,height,size", [
    ("auto", None, 640, 480, 224),            # photos: 224 px
    ("auto", "imagenet", 300, 224, 224),      # from 224 px typical on
    ("mobilenet_v2", None, 640, 480, 224),    # a pretrained network named with --arch: the same
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


def test_imgclf_train_on_colour_photos_uses_224_px(tmp_path):
    """`imgclf train` on a folder of 320x240 colour photos: 224 px, said on stderr and in metadata.json."""
    data = make_tree(tmp_path / "photos", {"red": 6, "blue": 6}, mode="RGB", size=(320, 240), seed=3)
    weights = tmp_path / "bb.weights.h5"
    write_small_backbone(weights, seed=3)
    r = cli("train", data, "--weights", weights, "--alpha", 0.35, "--epochs", 1, "--fine-tune-epochs", 0, "--batch-size", 4,
            "--registry", tmp_path / "reg", "--name", "p", "--format", "json")
    assert r.exit_code == 0, r.output
    assert "read at 224 px" in r.stderr and "images 224x224x3" in r.stderr
    meta = json.loads((tmp_path / "reg" / "p" / "1" / "metadata.json").read_text())
    assert meta["preprocessing"]["image_size"] == [224, 224]
    assert meta["arch_choice"]["image_size"] == 224 and meta["arch_choice"]["chosen"] == "mobilenet_v2"
    assert meta["config"]["augment_policy"] == "style"


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
