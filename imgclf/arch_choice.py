"""`imgclf train --arch auto` (the default): which network to train, from the data, and why.

Colour images that are typically at least AUTO_PRETRAINED_MIN_SIZE px (median short side) get a
pretrained MobileNetV2 (ImageNet weights, or the file given with --weights PATH): on photos it beats
a network trained from scratch by far. Grayscale or small images (Fashion-MNIST, digits, icons) get our
cnn. `--weights imagenet|PATH` says that a pretrained network is wanted, whatever the size; `--weights
none` that it is not. The choice and its reason are said on stderr and recorded in metadata.json
("arch_choice"). A pretrained network on photos (typical short side at least PHOTO_MIN_SIDE px) reads them
at PHOTO_IMAGE_SIZE px rather than the pretrained default of 160, unless --image-size is given: small
objects anywhere in the frame keep more pixels (recorded as arch_choice["image_size"] and its reason). On
fewer than PHOTO_SMALL_SET["images"] training photos it reads them at PHOTO_SMALL_SET["image_size"] px and
also fine-tunes deeper and longer, unless --fine-tune-layers / --fine-tune-epochs are given
(arch_choice["fine_tune"] and its reason).
When the ImageNet weights cannot be downloaded, auto stops with the two ways out
instead of quietly training something else.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Optional

from imgclf.config import (AUTO_ARCH, AUTO_PRETRAINED_MIN_SIZE, PHOTO_IMAGE_SIZE, PHOTO_MIN_SIDE, PHOTO_SMALL_SET,
                           PRETRAINED_ARCH, TrainConfig)
from imgclf.data.scan import Dataset
from imgclf.errors import UsageError, WeightsUnavailable
from imgclf.preprocessing import is_grayscale_mode

SCRATCH_ARCH = "cnn"


def choose(cfg: TrainConfig, train: Dataset) -> TrainConfig:
    """A new TrainConfig with cfg.arch resolved ("auto" -> a registered name), the choice and its reason in
    arch_choice, and the photo input size and fine-tuning where they apply (`cfg` is not changed). A run
    being resumed keeps the choice it made when it started."""
    if cfg.arch_choice is not None:
        return cfg
    if cfg.arch != AUTO_ARCH:
        choice = {"requested": cfg.arch, "chosen": cfg.arch, "reason": "--arch given"}
    else:
        chosen, reason = _decide(cfg, train)
        choice = {"requested": AUTO_ARCH, "chosen": chosen, "reason": reason}
    photo_side = _photo_side(cfg, choice["chosen"], train)
    changes = {}
    small = len(train.samples) < PHOTO_SMALL_SET["images"]
    if photo_side is not None and cfg.image_size is None:
        size = PHOTO_SMALL_SET["image_size"] if small else PHOTO_IMAGE_SIZE
        changes["image_size"] = size
        choice.update(image_size=size, image_size_reason=(
            f"photos of {photo_side} px typical (at least {PHOTO_MIN_SIDE} px"
            + (f", under {PHOTO_SMALL_SET['images']:,} of them" if small else "")
            + f"): read at {size} px, so small objects keep their detail"))
    if photo_side is not None and small:
        deeper = {k: PHOTO_SMALL_SET[k] for k in ("fine_tune_layers", "fine_tune_epochs") if getattr(cfg, k) is None}
        if deeper:
            changes.update(deeper)
            choice.update(fine_tune=deeper, fine_tune_reason=(
                f"under {PHOTO_SMALL_SET['images']:,} training photos: fine-tuning "
                + " and ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in deeper.items())))
    return replace(cfg, arch=choice["chosen"], arch_choice=choice, **changes)


def _photo_side(cfg: TrainConfig, arch_name: str, train: Dataset) -> Optional[int]:
    """The typical (median) short side of the training images when a pretrained network is to read them and
    they are photos (at least PHOTO_MIN_SIDE px); else None."""
    from imgclf.architectures import get_architecture

    if not train.samples:
        return None
    try:
        arch = get_architecture(arch_name)
    except UsageError:  # an unknown --arch: train reports it
        return None
    sizes = (PHOTO_IMAGE_SIZE, PHOTO_SMALL_SET["image_size"])
    if not arch.starts_pretrained(cfg.weights) or (arch.allowed_sizes and not set(sizes) <= set(arch.allowed_sizes)):
        return None
    size = int(statistics.median(min(s.width, s.height) for s in train.samples))
    return size if size >= PHOTO_MIN_SIDE else None


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
    if choice.get("fine_tune"):
        line += f"; {choice['fine_tune_reason']} (pass them to override)"
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
