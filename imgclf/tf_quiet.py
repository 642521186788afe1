"""Importing TensorFlow/Keras without its C++ start-up noise on the user's terminal.

TensorFlow's C++ side writes "All log messages before absl::InitializeLog() ..." and the oneDNN banner
straight to file descriptor 2 while it is imported (TF_CPP_MIN_LOG_LEVEL does not stop them, see
TRAPS.md), so Python's logging and warnings filters never see them. Every imgclf module that needs
TensorFlow imports it through here: file descriptor 2 points at /dev/null for the import only, unless
`imgclf --verbose` (IMGCLF_VERBOSE=1) asked for everything. Our own warnings come later and still show.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

VERBOSE_ENV = "IMGCLF_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def _fd2_silenced():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded, some test runners)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose() else "2")
    with contextlib.nullcontext() if verbose() else _fd2_silenced():
        import tensorflow
    return tensorflow


def import_keras():
    if "keras" not in sys.modules:
        import_tensorflow()
    with contextlib.nullcontext() if verbose() else _fd2_silenced():
        import keras
    # Keras warns about shuffle=True on a tf.data input on every fit: we shuffle in tf.data on purpose
    warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed")
    return keras


def keras_class(factory):
    """Decorator for the Keras-dependent classes imgclf defines (layers, losses, callbacks): `factory(keras)`
    defines and returns the class; the decorated name becomes a function that builds it on first call
    and returns the same class after that. Importing the module that holds it imports no Keras, and the
    class is defined (and registered with Keras' serialization) once per process. The one style for
    every such class:

        @keras_class
        def vote_layer_class(keras):
            class NeighbourVote(keras.layers.Layer): ...
            return NeighbourVote

        layer = vote_layer_class()(...)
    """
    import functools

    made = []

    @functools.wraps(factory)
    def get():
        if not made:
            made.append(factory(import_keras()))
        return made[0]

    return get
