#!/usr/bin/env python3
"""Probe of training recipes for the small-image cnn on the full Fashion-MNIST, in one process (pixels read
once from the Debian package's idx files; imgclf's own tf.data pipeline and augmentation layers).

    python bench/cnn_recipe_probe.py NAME [arch=cur|dbl2|wide|dbl12|dbl23] [bs=128] [epochs=12]
        [sched=cosine|plateau] [ls=0.1] [shift=0] [flip=none|horizontal] [lr=1e-3] [warm=1] [wd=0]
        [pol=float32|mixed_bfloat16] [drop=1] [seed=42] [opt=adam|sgd] [ema=0] [ishift=0] [erase=0]
    python bench/cnn_recipe_probe.py --throughput cur:64 cur:128 dbl2:128 dbl2:256:mixed_bfloat16 ...

Holds out a stratified 10% of the 60,000 training images as validation (seed 42), like `imgclf train`;
prints validation accuracy and the process's CPU seconds (user + sys, all threads) after every epoch,
then one JSON line with the final validation and test accuracy (and the test accuracy of the mean of each
image's and its mirror image's probabilities, `test_flip_mean`). Choose on validation; test is reported.
`--throughput` trains each variant two epochs on 6,144 random images and prints CPU seconds per
54,000-image epoch (no accuracy): widths, batch sizes and precision policies (ARCH:BATCH[:POLICY])
measured for CPU throughput.
Architectures: cur = the cnn as it was before issue 14 (28 px: conv 32 | 64 | 128, Flatten, Dense 128);
dbl2 = a second conv in block 2 (the cnn now); wide = widths 48 | 96 | 192; dbl12, dbl23 = two convs in
blocks 1-2 or 2-3. wd = AdamW's decoupled weight decay (0: Adam); pol = Keras' precision policy;
drop = a factor on every dropout rate; seed = the training seed (the validation split stays seed 42);
opt = sgd: SGD with Nesterov momentum 0.9 (wd then Keras' weight decay of SGD) instead of Adam(W);
ema = a momentum for an exponential moving average of the weights (Keras' use_ema; 0: off), whose
average replaces the weights at the end of training; ishift = K: each training image moved by a whole
number of pixels, up to K each way in x and y, zero-filled (no resampling, so no blur; Fashion-MNIST's
background is 0); erase = P: random erasing (Zhong et al. 2017) after the shift: with probability P each
training image gets one rectangle of area U(2%, 40%) of the image and aspect log-uniform in (0.3, 3.3) at a
random place filled with uniform noise 0-255. Source: /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist).
"""
import glob
import gzip
import json
import math
import os
import resource
import struct
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SOURCE = "/usr/share/datasets/fashion-mnist/"


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(name, drop=1.0):
    import keras
    from keras import layers

    widths, double = (32, 64, 128), (False, False, False)
    if name == "wide":
        widths = (48, 96, 192)
    double = {"dbl2": (False, True, False), "dbl12": (True, True, False),
              "dbl23": (False, True, True)}.get(name, double)
    inp = keras.Input((28, 28, 1))
    x = layers.Rescaling(1 / 255)(inp)
    for i, w in enumerate(widths):
        for _ in range(2 if double[i] else 1):
            x = layers.Conv2D(w, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.Activation("relu")(x)
        if i < len(widths) - 1:
            x = layers.MaxPooling2D()(x)
            x = layers.Dropout(0.1 * drop)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3 * drop)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.3 * drop)(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax", dtype="float32")(x))


def throughput(specs):
    import keras

    from imgclf.data.pipeline import make_dataset

    rng = np.random.default_rng(0)
    n = 6144
    x = rng.integers(0, 255, (n, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int32)
    for spec in specs:
        name, bs, *policy = spec.split(":")
        keras.mixed_precision.set_global_policy(policy[0] if policy else "float32")
        m = build(name)
        m.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        ds = make_dataset(x, y, int(bs), shuffle=True, seed=1)
        m.fit(ds, epochs=1, verbose=0)
        c0, t0 = cpu(), time.time()
        m.fit(ds, epochs=2, verbose=0)
        print(f"{spec}: {(cpu() - c0) / (2 * n) * 54000:.1f} CPU-s per 54k-image epoch, "
              f"{(time.time() - t0) / (2 * n) * 54000:.1f} s wall, {m.count_params()} parameters", flush=True)


def idx(path):
    d = gzip.open(path).read()
    nd = struct.unpack(">I", d[:4])[0] & 255
    dims = struct.unpack(">" + "I" * nd, d[4:4 + 4 * nd])
    return np.frombuffer(d[4 + 4 * nd:], np.uint8).reshape(dims)


def random_erasing(keras, p, seed):
    """With probability p per image, one rectangle (area U(0.02, 0.4) of the image, aspect log-uniform in
    (0.3, 3.3), at a uniform place, clipped at the border) filled with uniform noise 0-255; float32 NHWC 0-255
    batches."""
    from keras import ops
    gen = keras.random.SeedGenerator(seed)

    def erase(x):
        n, h, w = ops.shape(x)[0], x.shape[1], x.shape[2]
        area = keras.random.uniform((n, 1, 1), 0.02, 0.4, seed=gen) * (h * w)
        aspect = ops.exp(keras.random.uniform((n, 1, 1), math.log(0.3), math.log(1 / 0.3), seed=gen))
        eh, ew = ops.minimum(ops.sqrt(area * aspect), h), ops.minimum(ops.sqrt(area / aspect), w)
        y0 = keras.random.uniform((n, 1, 1), 0, 1, seed=gen) * (h - eh)
        x0 = keras.random.uniform((n, 1, 1), 0, 1, seed=gen) * (w - ew)
        yy = ops.reshape(ops.arange(h, dtype="float32"), (1, h, 1))
        xx = ops.reshape(ops.arange(w, dtype="float32"), (1, 1, w))
        on = ops.cast(keras.random.uniform((n, 1, 1), 0, 1, seed=gen) < p, "float32")
        box = ops.cast((yy >= y0) & (yy < y0 + eh) & (xx >= x0) & (xx < x0 + ew), "float32") * on
        noise = keras.random.uniform(ops.shape(x), 0, 255, seed=gen)
        return x * (1 - box[..., None]) + noise * box[..., None]
    return erase


def main():
    if sys.argv[1:2] == ["--throughput"]:
        return throughput(sys.argv[2:])
    import keras
    from sklearn.model_selection import train_test_split

    from imgclf.config import AugmentConfig
    from imgclf.data.augment import build_augmenter
    from imgclf.data.pipeline import make_dataset
    from imgclf.train import training_loss

    files = glob.glob(SOURCE + "*")
    find = lambda key: next(p for p in files if key in os.path.basename(p))  # noqa: E731
    xtr, ytr = idx(find("train-images"))[..., None], idx(find("train-labels")).astype(np.int32)
    xte, yte = idx(find("t10k-images"))[..., None], idx(find("t10k-labels")).astype(np.int32)
    name = sys.argv[1]
    o = dict(arch="cur", bs="128", epochs="12", sched="cosine", ls="0.1", shift="0", flip="none", lr="1e-3",
             warm="1", wd="0", pol="float32", drop="1", seed="42", opt="adam", ema="0", ishift="0", erase="0")
    o.update(a.split("=", 1) for a in sys.argv[2:])
    bs, epochs, lr = int(o["bs"]), int(o["epochs"]), float(o["lr"])
    tr, va = train_test_split(np.arange(len(ytr)), test_size=0.1, stratify=ytr, random_state=42)
    keras.utils.set_random_seed(int(o["seed"]))
    keras.mixed_precision.set_global_policy(o["pol"])
    model = build(o["arch"], float(o["drop"]))
    steps = math.ceil(len(tr) / bs) * epochs
    if o["sched"] == "cosine":
        warm = int(float(o["warm"]) * math.ceil(len(tr) / bs))
        sched = keras.optimizers.schedules.CosineDecay(lr / 10 if warm else lr, steps - warm,
                                                       warmup_target=lr if warm else None, warmup_steps=warm)
        callbacks = []
    else:
        sched = lr
        callbacks = [keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=2, min_lr=lr / 32)]
    wd = float(o["wd"])
    ema = dict(use_ema=True, ema_momentum=float(o["ema"])) if float(o["ema"]) else {}
    if o["opt"] == "sgd":
        opt = keras.optimizers.SGD(sched, momentum=0.9, nesterov=True, weight_decay=wd or None, **ema)
    elif wd:
        opt = keras.optimizers.AdamW(sched, weight_decay=wd, **ema)
    else:
        opt = keras.optimizers.Adam(sched, **ema)
    model.compile(opt, training_loss(keras, float(o["ls"])), metrics=["accuracy"])
    acfg = AugmentConfig(shift=float(o["shift"]), flip=o["flip"])
    aug = build_augmenter(acfg, int(o["seed"])) if acfg.shift or acfg.flip != "none" else None
    if int(o["ishift"]):  # imgclf's --shift-px layer (seeded as the probe's first version, same draws)
        from imgclf.data.augment import _random_pixel_shift_class
        aug = _random_pixel_shift_class()(int(o["ishift"]), seed=int(o["seed"]) + 1)
    if float(o["erase"]):
        shift_aug = aug
        erase = random_erasing(keras, float(o["erase"]), int(o["seed"]) + 2)

        def aug(x, training=True):
            return erase(shift_aug(x, training=True) if shift_aug is not None else x)
    train_ds = make_dataset(xtr[tr], ytr[tr], bs, shuffle=True, seed=int(o["seed"]), augment=aug)
    val_ds, test_ds = make_dataset(xtr[va], ytr[va], 256), make_dataset(xte, yte, 256)
    c0 = cpu()

    class Log(keras.callbacks.Callback):
        def on_epoch_end(self, e, logs=None):
            print(f"{name} epoch {e + 1}: loss {logs['loss']:.4f} acc {logs['accuracy']:.4f} "
                  f"val {logs['val_accuracy']:.4f} cpu {cpu() - c0:.0f}", flush=True)

    model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, callbacks=callbacks + [Log()])
    val_acc, test_acc = model.evaluate(val_ds, verbose=0)[1], model.evaluate(test_ds, verbose=0)[1]
    cpu_s = round(cpu() - c0)
    # the test set also scored with the mean of the image's and its mirror image's probabilities
    flipped = np.flip(xte, axis=2)
    p = model.predict(xte, batch_size=256, verbose=0) + model.predict(flipped, batch_size=256, verbose=0)
    print(json.dumps(dict(name=name, options=o, val=round(val_acc, 4), test=round(test_acc, 4),
                          test_flip_mean=round(float((p.argmax(1) == yte).mean()), 4), cpu_s=cpu_s)), flush=True)


if __name__ == "__main__":
    main()
