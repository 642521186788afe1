"""Transfer learning: MobileNetV2 / V3 backbones with a new classification head.

The model takes raw 0..255 pixels like our own CNN; the backbone's preprocessing (scaling to [-1, 1],
grayscale repeated to 3 channels) is inside the graph. The backbone always runs in inference mode
(`training=False`), so its BatchNorm statistics stay put in both phases of fine-tuning.
"""
from __future__ import annotations

import contextlib
import os
import sys

from imgclf.architectures import register_architecture
from imgclf.config import MOBILENET_SIZES
from imgclf.errors import UsageError, WeightsUnavailable

BACKBONE_NAME = "backbone"


def _count_h5_arrays(path: str) -> int:
    import h5py

    count = 0

    def visit(_, obj):
        nonlocal count
        if isinstance(obj, h5py.Dataset):
            count += 1
    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return count


def _make_backbone(family: str, input_shape, alpha: float, weights):
    import keras

    rgb_shape = (input_shape[0], input_shape[1], 3)
    kwargs = dict(input_shape=rgb_shape, alpha=alpha, include_top=False)
    if family == "mobilenet_v2":
        ctor = keras.applications.MobileNetV2
    else:
        ctor = keras.applications.MobileNetV3Small if family == "mobilenet_v3_small" \
            else keras.applications.MobileNetV3Large
        kwargs["include_preprocessing"] = False  # we scale ourselves, the same way for every family
    if weights in (None, "none"):
        return ctor(weights=None, **kwargs)
    if weights == "imagenet":
        try:
            # Keras prints "Downloading data from ..." on stdout: it belongs with the logs (data goes to stdout)
            with contextlib.redirect_stdout(sys.stderr):
                return ctor(weights="imagenet", **kwargs)
        except ValueError as e:
            raise UsageError(f"--weights imagenet: {e}") from None
        except Exception as e:  # urllib/HTTP/socket errors: no network
            raise WeightsUnavailable(f"--weights imagenet: cannot download the ImageNet weights ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else 'no network?'}); offline, pass a local "
                             "backbone file with --weights PATH") from None
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise UsageError(f"--weights {path}: file not found (use imagenet, none, or a .weights.h5/.h5 file)")
    backbone = ctor(weights=None, **kwargs)
    expected = len(backbone.weights)
    try:
        found = _count_h5_arrays(path)
    except Exception as e:
        raise UsageError(f"--weights {path}: not a readable HDF5 weights file ({e})") from None
    if found != expected:
        raise UsageError(f"--weights {path}: does not fit {family} alpha={alpha} without top "
                         f"(file has {found} weight arrays, the backbone needs {expected})")
    try:
        backbone.load_weights(path)
    except Exception as e:
        raise UsageError(f"--weights {path}: does not fit {family} alpha={alpha} without top "
                         f"({str(e).splitlines()[0]})") from None
    return backbone


def build_transfer(family: str, input_shape, num_classes, cfg):
    import keras
    from keras import layers

    from imgclf.architectures import get_architecture

    weights = getattr(cfg, "weights", None) or "imagenet"
    alpha = getattr(cfg, "alpha", 1.0)
    pretrained = get_architecture(family).starts_pretrained(weights)
    backbone = _make_backbone(family, input_shape, alpha, weights)
    backbone.name = BACKBONE_NAME
    # Pretrained: freeze the backbone and keep its BatchNorm in inference mode (phase 1 trains the head).
    # Random init: there is nothing to protect, so the whole network trains, BatchNorm included
    # (a frozen random backbone gives chance-level features: 10% on 10 classes in bench/transfer.py).
    backbone.trainable = not pretrained
    if not pretrained:
        # Keras builds these backbones with BatchNorm momentum 0.999: its moving averages need thousands
        # of steps to leave their initial values, so a small data set's model predicted one class at
        # inference (10% test accuracy after 145 steps in bench/transfer.py). 0.9 follows in tens of steps.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.9

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(x)
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="head_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=family)


def unfreeze_top(model, amount: float) -> int:
    """Phase 2: unfreeze the top `amount` layers of the backbone (a count when >= 1, else a fraction).
    BatchNorm layers stay frozen. Returns how many layers became trainable."""
    from keras.layers import BatchNormalization

    backbone = model.get_layer(BACKBONE_NAME)
    backbone.trainable = True
    n = len(backbone.layers)
    k = int(amount) if amount >= 1 else max(1, int(round(n * amount)))
    k = min(k, n)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= n - k and not isinstance(layer, BatchNormalization)
    return k


def _register(family, description):
    @register_architecture(family, default_size=224, allowed_sizes=MOBILENET_SIZES, takes_weights=True,
                           unfreeze=unfreeze_top, description=description)
    def build(input_shape, num_classes, cfg=None, _family=family):
        return build_transfer(_family, input_shape, num_classes, cfg)
    return build


_register("mobilenet_v2", "MobileNetV2 backbone (ImageNet weights) + new head: transfer learning")
_register("mobilenet_v3_small", "MobileNetV3-Small backbone (ImageNet weights) + new head: transfer learning")
_register("mobilenet_v3_large", "MobileNetV3-Large backbone (ImageNet weights) + new head: transfer learning")
