"""The nearest-neighbour memory: a trained model's answer blended with a vote of the training images
that a new image looks most like.

At the end of `imgclf train` every training image's embedding (the pooled features of the layer named
"gap", scaled to unit length) is stored inside the model, with its label. For a new image the memory
votes with the cosine similarity s_i to each stored image i:

    vote[c] = sum over the training images i of class c of exp((s_i - max s) / T) / (the same over all i)

(a soft nearest-neighbour: with T = MEMORY_TEMPERATURE it follows the few closest images), and the model's
output is (1 - w) * head + w * vote, w = --memory. It is plain graph arithmetic (a matrix product, exp and
sums), so the .keras file, the ONNX export and every backend carry it, with no file beside the model.

Why: a classifier head learns what separates the classes in the training images' own style; the vote
asks which training image this one is a version of, which survives a change of drawing style or camera
far better. On emoji trained on google and tested on twitter's drawings of the same emoji, the default
model's head alone scores 59.7% and the blend 71.5% (means of three seeds; docs/benchmarks.md, "A twelfth
session").

The cost is memory: images x feature width x 4 bytes in the model (1,716 images x 1,280 = 8.8 MB for
MobileNetV2), and one matrix product per image (2.2 MFLOPs there, under 1% of the backbone's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from imgclf.tf_quiet import keras_class

#: the layer whose output the memory stores (architectures name their pooled features so)
FEATURES_LAYER = "gap"
MEMORY_LAYER = "memory"
#: the layers a model with a memory adds after its head (with_memory); int8 export keeps them float
ADDED_LAYERS = (MEMORY_LAYER, "head_share", "memory_share", "blend")


@keras_class
def vote_layer_class(keras):
    """NeighbourVote, defined (and registered with Keras) on first use: importing imgclf loads no Keras."""

    @keras.saving.register_keras_serializable(package="imgclf", name="NeighbourVote")
    class NeighbourVote(keras.layers.Layer):
        """Class probabilities from the cosine similarity of the input features to stored references:
        a softmax over the references at `temperature`, summed per class. The references (unit length)
        and their one-hot labels are weights of the layer, not trained."""

        def __init__(self, references: int, width: int, classes: int, temperature: float, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.references, self.width = int(references), int(width)
            self.classes, self.temperature = int(classes), float(temperature)

        def build(self, input_shape):
            self.embeddings = self.add_weight(shape=(self.references, self.width), initializer="zeros",
                                              trainable=False, name="embeddings")
            self.labels = self.add_weight(shape=(self.references, self.classes), initializer="zeros",
                                          trainable=False, name="labels")

        def call(self, features):
            ops = keras.ops
            x = ops.cast(features, "float32")
            x = x / ops.maximum(ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True)), 1e-12)
            s = ops.matmul(x, ops.transpose(self.embeddings))
            weights = ops.exp((s - ops.max(s, axis=-1, keepdims=True)) / self.temperature)
            votes = ops.matmul(weights, self.labels)
            return votes / ops.sum(votes, axis=-1, keepdims=True)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.classes)

        def get_config(self):
            return {**super().get_config(), "references": self.references, "width": self.width,
                    "classes": self.classes, "temperature": self.temperature}

    return NeighbourVote


def load_keras_model(path: Path):
    """A saved imgclf model (model.keras), with imgclf's own layers known to Keras."""
    from imgclf.tf_quiet import import_keras

    keras = import_keras()
    vote_layer_class()
    return keras.models.load_model(path, compile=False, safe_mode=True)


def in_memory(node_name: str) -> bool:
    """Whether an exported (tf2onnx) node belongs to the layers with_memory adds: its name holds one of
    them as a path segment, e.g. "mobilenet_v2_1/memory_1/MatMul"."""
    return any(segment in ADDED_LAYERS or segment.rpartition("_")[0] in ADDED_LAYERS
               for segment in node_name.split("/"))


def has_features(model) -> bool:
    """Whether `model` has pooled features the memory can store (the MobileNets; the cnn from 64 px)."""
    return any(layer.name == FEATURES_LAYER for layer in model.layers)


def embed(model, pixels: np.ndarray, batch_size: int = 64, progress=lambda done: None) -> np.ndarray:
    """Unit-length pooled features of uint8 `pixels` (N, H, W, C), float32 (N, width)."""
    import keras

    features = keras.Model(model.input, model.get_layer(FEATURES_LAYER).output)
    out = []
    for i in range(0, len(pixels), batch_size):
        out.append(np.asarray(features(np.asarray(pixels[i:i + batch_size], dtype=np.float32), training=False),
                              dtype=np.float32))
        progress(i + len(out[-1]))
    out = np.concatenate(out)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def attach(model, pixels: np.ndarray, labels: np.ndarray, num_classes: int, weight: float,
           temperature: float, batch_size: int = 64, progress=lambda done: None):
    """A new model: `model`'s output blended with the memory of (`pixels`, `labels`) at `weight`
    (0 < weight <= 1). The layers of `model` are shared, not copied."""
    embeddings = embed(model, pixels, batch_size, progress)
    blended = with_memory(model, len(labels), embeddings.shape[1], num_classes, weight, temperature)
    blended.get_layer(MEMORY_LAYER).set_weights([embeddings,
                                                 np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]])
    return blended


def with_memory(model, references: int, width: int, num_classes: int, weight: float, temperature: float):
    """`model` blended with an empty memory of `references` images (its weights set by the caller): the
    graph of every model with a memory, so a saved model's weights fit a rebuilt one (export.py)."""
    import keras
    from keras import layers

    vote = vote_layer_class()(references, width, num_classes, temperature, name=MEMORY_LAYER)(
        model.get_layer(FEATURES_LAYER).output)
    head = layers.Rescaling(1.0 - weight, name="head_share", dtype="float32")(model.outputs[0])
    memory = layers.Rescaling(weight, name="memory_share", dtype="float32")(vote)
    blended = layers.Add(name="blend", dtype="float32")([head, memory])
    return keras.Model(model.input, blended, name=model.name)


def describe(weight: float, temperature: float, images: int, width: int) -> dict:
    """metadata.json["memory"]: what the model holds."""
    return {"weight": weight, "temperature": temperature, "images": images, "width": width,
            "bytes": images * width * 4}
