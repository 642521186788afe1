"""Model builders registered by name. Each takes raw 0..255 float32 pixels (NHWC) and does its own
scaling inside the graph, so the exported model needs nothing but resized pixels.

    @register_architecture("cnn", default_size=None)
    def build(input_shape, num_classes, cfg) -> keras.Model
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from imgclf.errors import UsageError


@dataclass
class Architecture:
    name: str
    build: Callable
    default_size: Optional[int]      # None: chosen from the data
    allowed_sizes: Optional[tuple]   # None: any size
    pretrained: bool                 # takes --weights
    description: str


_REGISTRY: Dict[str, Architecture] = {}


def register_architecture(name: str, default_size: Optional[int] = None, allowed_sizes=None,
                          pretrained: bool = False, description: str = ""):
    def deco(fn):
        _REGISTRY[name] = Architecture(name, fn, default_size, allowed_sizes, pretrained,
                                       description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return deco


def _load_all():
    # the builder modules import keras lazily, inside the builders
    from imgclf.architectures import cnn, mobilenet  # noqa: F401


def names():
    _load_all()
    return sorted(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    _load_all()
    if name not in _REGISTRY:
        raise UsageError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
