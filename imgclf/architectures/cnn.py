"""Our own models: `cnn` (a small modern CNN) and `mlp` (the classic MNIST baseline)."""
from imgclf.architectures import register_architecture

#: from this input size up the cnn is built for photos: each image standardised (its own mean and
#: standard deviation: colours and exposure vary from photo to photo) and a global-average-pooling head
#: (objects anywhere in the frame). On the photo-like set of bench/make_photos.py at 64 px, 15 epochs:
#: 94.4% test accuracy with both, 51-62% with either alone or neither (docs/benchmarks.md).
PHOTO_SIZE = 64


@register_architecture("cnn", description="small modern CNN: conv blocks with batch-norm and pooling "
                                          "(dropout for photos), then a dense head (good default for small and medium datasets)")
def build_cnn(input_shape, num_classes, cfg=None):
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    photo = min(input_shape[0], input_shape[1]) >= PHOTO_SIZE
    if photo:
        # per-image standardisation over height, width and channels (no learned scale or offset)
        x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, epsilon=1e-3,
                                      name="standardize")(x)

    def conv(x, filters, name):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    # Downsample early when the images are large, so cost stays bounded.
    size = min(input_shape[0], input_shape[1])
    filters = 32
    block = 0
    while True:
        block += 1
        x = conv(x, filters, f"b{block}")
        if block == 2 and not photo:
            # small images: a second convolution at half resolution (14x14 for 28 px inputs)
            x = conv(x, filters, f"b{block}b")
        if size <= 8 or block == 5:
            break
        x = layers.MaxPooling2D(name=f"b{block}_pool")(x)
        if photo:  # small images train better without dropout in the 9-epoch budget (docs/benchmarks.md)
            x = layers.Dropout(0.1, name=f"b{block}_drop")(x)
        size //= 2
        filters = min(filters * 2, 256)
    if photo:
        # where the object is does not matter in a photo: pool over the whole map
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        x = layers.Dropout(0.3, name="head_drop")(x)
    else:
        # Small images (centred objects): the last map is at most 8x8, and flattening it keeps where
        # things are, which global average pooling throws away (on Fashion-MNIST, 6 epochs on 12k
        # images: 89.7% vs 85.3% val accuracy). No dropout: on Fashion-MNIST, 9 epochs, +0.25 test
        # accuracy on two seeds at 0.92x the CPU; the quickstart +0.5 (label smoothing regularises enough).
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(128, activation="relu", name="head_dense")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="cnn")


@register_architecture("mlp", description="Flatten -> Dense(256) -> softmax: the classic MNIST baseline")
def build_mlp(input_shape, num_classes, cfg=None):
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="dense")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="mlp")
