"""`imgclf train --arch auto` (the default): which network to train, from the data, and why.

Colour images that are typically at least AUTO_PRETRAINED_MIN_SIZE px (median short side) get a
pretrained MobileNetV2 (ImageNet weights, or the file given with --weights PATH): on photos it beats
a network trained from scratch by far. Grayscale or small images (Fashion-MNIST, digits, icons) get our
cnn. `--weights imagenet|PATH` says that a pretrained network is wanted, whatever the size; `--weights
none` that it is not. The choice and its reason are said on stderr and recorded in metadata.json
("arch_choice"). A pretrained network on photos (typical short side at least PHOTO_MIN_SIDE px) reads them
at PHOTO_IMAGE_SIZE px rather than the pretrained default of 160, unless --image-size is given: small
objects anywhere in the frame keep more pixels (recorded as arch_choice["image_size"] and its reason).
When the ImageNet weights cannot be downloaded, auto stops with the two ways out
instead of quietly training something else.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Optional

from imgclf.config import (AUTO_ARCH, AUTO_PRETRAINED_MIN_SIZE, PHOTO_IMAGE_SIZE, PHOTO_MIN_SIDE, PRETRAINED_ARCH,
                           TrainConfig)
from imgclf.data.scan import Dataset
from imgclf.errors import UsageError, WeightsUnavailable
from imgclf.preprocessing import is_grayscale_mode

SCRATCH_ARCH = "cnn"


def choose(cfg: TrainConfig, train: Dataset) -> TrainConfig:
    """A new TrainConfig with cfg.arch resolved ("auto" -> a registered name), the choice and its reason in
    arch_choice, and the photo input size where it applies (`cfg` is not changed). A run being resumed
    keeps the choice it made when it started."""
    if cfg.arch_choice is not None:
        return cfg
    if cfg.arch != AUTO_ARCH:
        choice = {"requested": cfg.arch, "chosen": cfg.arch, "reason": "--arch given"}
    else:
        chosen, reason = _decide(cfg, train)
        choice = {"requested": AUTO_ARCH, "chosen": chosen, "reason": reason}
    size, why = _photo_size(cfg, choice["chosen"], train)
    if size is None:
        return replace(cfg, arch=choice["chosen"], arch_choice=choice)
    choice.update(image_size=size, image_size_reason=why)
    return replace(cfg, arch=choice["chosen"], arch_choice=choice, image_size=size)


def _photo_size(cfg: TrainConfig, arch_name: str, train: Dataset):
    """A pretrained network on photos: (PHOTO_IMAGE_SIZE, the reason) unless --image-size was given;
    else (None, None)."""
    from imgclf.architectures import get_architecture

    if cfg.image_size is not None or not train.samples:
        return None, None
    try:
        arch = get_architecture(arch_name)
    except UsageError:  # an unknown --arch: train reports it
        return None, None
    if not arch.starts_pretrained(cfg.weights) or (arch.allowed_sizes and PHOTO_IMAGE_SIZE not in arch.allowed_sizes):
        return None, None
    size = int(statistics.median(min(s.width, s.height) for s in train.samples))
    if size < PHOTO_MIN_SIDE:
        return None, None
    return PHOTO_IMAGE_SIZE, (f"photos of {size} px typical (at least {PHOTO_MIN_SIDE} px): read at "
                              f"{PHOTO_IMAGE_SIZE} px, so small objects keep their detail")


def _decide(cfg: TrainConfig, train: Dataset):
    weights = cfg.weights
    if weights == "none":
        return SCRATCH_ARCH, "--weights none: no pretrained network wanted"
    source = "ImageNet weights" if weights in (None, "imagenet") else f"weights from {weights}"
    if weights is not None:
        return PRETRAINED_ARCH, f"--weights {weights}: a pretrained network ({source})"
    samples = train.samples
    if not samples:
        return SCRATCH_ARCH, "no training images to look at"
    colour = sum(not is_grayscale_mode(s.mode) for s in samples)
    size = int(statistics.median(min(s.width, s.height) for s in samples))
    if cfg.channels == 1:
        return SCRATCH_ARCH, "--channels 1 (grayscale)"
    if colour == 0 and cfg.channels is None:
        return SCRATCH_ARCH, f"grayscale images ({size} px typical); pretrained networks are chosen for colour"
    if size < AUTO_PRETRAINED_MIN_SIZE:
        return SCRATCH_ARCH, (f"small images ({size} px typical, under {AUTO_PRETRAINED_MIN_SIZE} px); "
                              "a pretrained network is chosen from there up")
    what = "colour images" if colour else "images (--channels 3)"
    return PRETRAINED_ARCH, (f"{what} of {size} px typical (at least {AUTO_PRETRAINED_MIN_SIZE} px): "
                             f"pretrained, {source}")


def describe(choice: dict) -> Optional[str]:
    """The stderr line for an automatic choice (None when --arch was given)."""
    if choice.get("requested") != AUTO_ARCH:
        return None
    other = "--arch cnn" if choice["chosen"] != SCRATCH_ARCH else f"--arch {PRETRAINED_ARCH}"
    line = f"--arch auto chose {choice['chosen']}: {choice['reason']} (pass {other} to override)"
    if choice.get("image_size"):
        line += f"; {choice['image_size_reason']} (pass --image-size 160 to override)"
    return line


def build_model(arch, input_shape, num_classes: int, cfg: TrainConfig):
    """arch.build, with the two ways out when auto's pretrained network cannot get its ImageNet weights."""
    try:
        return arch.build(input_shape, num_classes, cfg)
    except WeightsUnavailable as e:
        choice = cfg.arch_choice or {}
        if choice.get("requested") != AUTO_ARCH:
            raise
        reason = str(e).split(": ", 1)[-1].split("; offline")[0]
        raise UsageError(f"--arch auto chose {choice['chosen']} with ImageNet weights, but {reason}: pass "
                         f"--weights PATH (a local {choice['chosen']} backbone .weights.h5) or --arch cnn") from None
