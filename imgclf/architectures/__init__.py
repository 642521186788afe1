"""Model builders registered by name. Each takes raw 0..255 float32 pixels (NHWC) and does its own
scaling inside the graph, so the exported model needs nothing but resized pixels.

    @register_architecture("cnn", default_size=None)
    def build(input_shape, num_classes, cfg) -> keras.Model

An architecture that can start from pretrained weights registers with `takes_weights=True` and an
`unfreeze(model, amount) -> layers unfrozen` hook: training then runs a head phase and, when asked, a
fine-tune phase (see train.py). Whether a run starts pretrained is `Architecture.starts_pretrained`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from imgclf.errors import UsageError


@dataclass
class Architecture:
    name: str
    build: Callable
    default_size: Optional[int]      # None: chosen from the data
    allowed_sizes: Optional[tuple]   # None: any size
    takes_weights: bool              # accepts --weights imagenet | none | PATH
    description: str
    unfreeze: Optional[Callable] = None  # (model, amount) -> number of layers made trainable

    def starts_pretrained(self, weights: Optional[str]) -> bool:
        """The one answer to "does this run start from pretrained weights?" (two phases: head, fine-tune)."""
        return self.takes_weights and weights != "none"

    def check_weights(self, weights: Optional[str]) -> None:
        if weights and weights != "none" and not self.takes_weights:
            raise UsageError(f"--weights applies to the pretrained architectures only, not {self.name}")


_REGISTRY: Dict[str, Architecture] = {}


def register_architecture(name: str, default_size: Optional[int] = None, allowed_sizes=None,
                          takes_weights: bool = False, unfreeze: Optional[Callable] = None,
                          description: str = ""):
    def deco(fn):
        _REGISTRY[name] = Architecture(name, fn, default_size, allowed_sizes, takes_weights,
                                       description or (fn.__doc__ or "").strip().splitlines()[0], unfreeze)
        return fn
    return deco


def _load_all():
    # the builder modules import keras lazily, inside the builders
    from imgclf.architectures import cnn, mobilenet  # noqa: F401 (importing registers them)


def names() -> List[str]:
    """Registered names, in the order the CLI lists them (our own models first)."""
    _load_all()
    return list(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    _load_all()
    if name not in _REGISTRY:
        raise UsageError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
