"""Augmentation: Keras random preprocessing layers, seeded.

Online (`imgclf train --augment ...`): applied in the tf.data pipeline to the training split only;
never part of the saved or exported model. Offline (`imgclf augment SRC DEST`): the same layers write
new image files next to copies (or links) of the originals.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from imgclf.config import DEFAULT_SEED, SPLIT_MODE, SPLIT_MODES, AugmentConfig
from imgclf.errors import DataError, ImageError, UsageError
from imgclf.tf_quiet import keras_class


def build_augmenter(cfg: AugmentConfig, seed: int):
    """A keras.Sequential of random layers for raw 0..255 pixels, or None when `cfg` does nothing.

    Rotation, shift and zoom are drawn separately but applied as ONE affine resampling: Keras'
    RandomRotation, RandomTranslation and RandomZoom in a row resample three times, and on small images
    (28x28) the three bilinear passes visibly blur away fine texture (a shirt's pattern)."""
    if not cfg.active:
        return None
    from imgclf.tf_quiet import import_keras

    keras = import_keras()
    from keras import layers

    ops = []
    if cfg.flip != "none":
        mode = {"horizontal": "horizontal", "vertical": "vertical", "both": "horizontal_and_vertical"}[cfg.flip]
        ops.append(layers.RandomFlip(mode, seed=seed))
    if cfg.crop > 0:
        ops.append(_random_resized_crop_class()(cfg.crop, seed=seed + 7, name="random_resized_crop"))
    if cfg.shift_px > 0:
        ops.append(_random_pixel_shift_class()(cfg.shift_px, seed=seed + 3, name="random_pixel_shift"))
    if cfg.rotate > 0 or cfg.shift > 0 or cfg.zoom > 0:
        ops.append(_random_affine_class()(cfg.rotate, cfg.shift, cfg.zoom, seed=seed + 1, name="random_affine"))
    if cfg.hue > 0 or cfg.saturation > 0 or cfg.grayscale > 0:
        ops.append(_random_color_class()(cfg.hue, cfg.saturation, cfg.grayscale, seed=seed + 2, name="random_color"))
    if cfg.brightness > 0:
        ops.append(layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 4))
    if cfg.contrast > 0:
        ops.append(layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 5))
    if cfg.randconv > 0:
        ops.append(_random_conv_class()(cfg.randconv, seed=seed + 6, name="random_conv"))
    return keras.Sequential(ops, name="augmentation")


def _resample(ops, images, row_x, row_y, **options):
    """Each image resampled by its own affine map, output pixel (x, y) -> input pixel
    (row_x . (x, y, 1), row_y . (x, y, 1)), each row three (n,) tensors; `options` for
    ops.image.affine_transform (interpolation, fill_mode, fill_value). Keeps the images' dtype."""
    zeros = ops.zeros_like(row_x[0])
    transform = ops.stack([*row_x, *row_y, zeros, zeros], axis=1)
    out = ops.image.affine_transform(ops.cast(images, "float32"), transform, data_format="channels_last", **options)
    return ops.cast(out, images.dtype)


@keras_class
def _random_affine_class(keras):
    """keras.layers.Layer: per image, rotate by U(-deg, +deg), shift by U(-f, +f) of each side and scale
    by U(1 - zoom, 1 + zoom) about the centre, in one bilinear resampling with reflected borders.
   """
    import math

    ops = keras.ops

    class RandomAffine(keras.layers.Layer):
        def __init__(self, rotate_deg=0.0, shift=0.0, zoom=0.0, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.rotate = float(rotate_deg) * math.pi / 180.0
            self.shift, self.zoom = float(shift), float(zoom)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=True):
            if not training:
                return images
            shape = ops.shape(images)
            n, h, w = shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")

            def uniform(bound):
                return keras.random.uniform((n,), -bound, bound, seed=self.generator) if bound > 0 \
                    else ops.zeros((n,))

            theta, tx, ty, dz = uniform(self.rotate), uniform(self.shift), uniform(self.shift), uniform(self.zoom)
            tx, ty, scale = tx * w, ty * h, 1.0 + dz
            cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
            # output pixel -> input pixel: in = M (out - c - t) + c, M = rotation(theta) / scale
            cos, sin = ops.cos(theta) / scale, ops.sin(theta) / scale
            a0, a1, b0, b1 = cos, -sin, sin, cos
            ox, oy = cx + tx, cy + ty
            a2 = cx - a0 * ox - a1 * oy
            b2 = cy - b0 * ox - b1 * oy
            return _resample(ops, images, (a0, a1, a2), (b0, b1, b2), interpolation="bilinear", fill_mode="reflect")

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "rotate_deg": self.rotate * 180.0 / math.pi, "shift": self.shift,
                    "zoom": self.zoom, "seed": self.seed}

    return RandomAffine


@keras_class
def _random_resized_crop_class(keras):
    """keras.layers.Layer: per image, a random rectangle of U(min_area, 1) of the image's area, aspect ratio
    log-uniform in 3/4..4/3 (clipped to the image), at a uniform place, resized back to the input size in one
    bilinear resampling: torchvision's RandomResizedCrop, on the already resized image (the pipeline caches
    images at the model's size), so a crop magnifies rather than reads finer detail. It never reaches outside
    the image, so no border is invented."""
    import math

    ops = keras.ops

    class RandomResizedCrop(keras.layers.Layer):
        def __init__(self, min_area=0.08, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.min_area = float(min_area)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=True):
            if not training:
                return images
            shape = ops.shape(images)
            n, h, w = shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
            area = keras.random.uniform((n,), self.min_area, 1.0, seed=self.generator)
            log_ratio = keras.random.uniform((n,), math.log(3 / 4), math.log(4 / 3), seed=self.generator)
            ratio = ops.exp(log_ratio)
            # crop sides as fractions of the image's sides (width/height = ratio in the image's own aspect)
            fw = ops.minimum(ops.sqrt(area * ratio), 1.0)
            fh = ops.minimum(ops.sqrt(area / ratio), 1.0)
            x0 = keras.random.uniform((n,), 0.0, 1.0, seed=self.generator) * (1.0 - fw) * (w - 1.0)
            y0 = keras.random.uniform((n,), 0.0, 1.0, seed=self.generator) * (1.0 - fh) * (h - 1.0)
            # output pixel -> input pixel: x_in = x0 + fw * x_out, y_in = y0 + fh * y_out
            zeros = ops.zeros((n,))
            return _resample(ops, images, (fw, zeros, x0), (zeros, fh, y0), interpolation="bilinear",
                             fill_mode="nearest")

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "min_area": self.min_area, "seed": self.seed}

    return RandomResizedCrop


@keras_class
def _random_pixel_shift_class(keras):
    """keras.layers.Layer: per image, move by a whole number of pixels drawn from -k..k in x and in y,
    filling what comes in with 0 (the classic pad-and-random-crop). No resampling, so no blur: every
    pixel keeps its value."""
    ops = keras.ops

    class RandomPixelShift(keras.layers.Layer):
        def __init__(self, max_px=1, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.max_px = int(max_px)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=True):
            if not training:
                return images
            n = ops.shape(images)[0]
            t = ops.cast(keras.random.randint((n, 2), -self.max_px, self.max_px + 1, seed=self.generator),
                         "float32")
            one, zero = ops.ones((n,)), ops.zeros((n,))
            # output pixel (x, y) <- input pixel (x + tx, y + ty): an integer offset, read by nearest neighbour
            return _resample(ops, images, (one, zero, t[:, 0]), (zero, one, t[:, 1]), interpolation="nearest",
                             fill_mode="constant", fill_value=0)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "max_px": self.max_px, "seed": self.seed}

    return RandomPixelShift


@keras_class
def _random_color_class(keras):
    """keras.layers.Layer: per image, rotate the hue by U(-hue, +hue) of a full turn, scale the saturation
    by U(1 - saturation, 1 + saturation), and with probability `grayscale` drop the colour altogether
    (kept as 3 equal channels). All three are one 3x3 colour matrix per image, in YIQ space: luma Y (the
    same weights as Pillow's convert("L")) is kept, the chroma plane (I, Q) is rotated (hue) and scaled
    (saturation; 0 = gray). Images with other than 3 channels pass unchanged. Defined on first use so that
    importing this module does not import Keras."""
    import math

    ops = keras.ops

    rgb_to_yiq = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                           [0.211456, -0.522591, 0.311135]], dtype="float32")
    yiq_to_rgb = np.linalg.inv(rgb_to_yiq).astype("float32")

    class RandomColor(keras.layers.Layer):
        def __init__(self, hue=0.0, saturation=0.0, grayscale=0.0, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.hue, self.saturation, self.grayscale = float(hue), float(saturation), float(grayscale)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=True):
            if not training or images.shape[-1] != 3:
                return images
            dtype = images.dtype
            n = ops.shape(images)[0]
            theta = keras.random.uniform((n,), -self.hue, self.hue, seed=self.generator) * (2.0 * math.pi) \
                if self.hue > 0 else ops.zeros((n,))
            scale = keras.random.uniform((n,), 1.0 - self.saturation, 1.0 + self.saturation,
                                         seed=self.generator) if self.saturation > 0 else ops.ones((n,))
            if self.grayscale > 0:
                gray = keras.random.uniform((n,), 0.0, 1.0, seed=self.generator) < self.grayscale
                scale = ops.where(gray, ops.zeros((n,)), scale)
            cos, sin = ops.cos(theta) * scale, ops.sin(theta) * scale
            ones, zeros = ops.ones((n,)), ops.zeros((n,))
            # chroma transform in YIQ, per image: [[1, 0, 0], [0, cos, -sin], [0, sin, cos]]
            chroma = ops.reshape(ops.stack([ones, zeros, zeros, zeros, cos, -sin, zeros, sin, cos], axis=1),
                                 (-1, 3, 3))
            # pixels are row vectors: rgb' = rgb @ (yiq_to_rgb @ chroma @ rgb_to_yiq)^T
            full = ops.matmul(ops.matmul(ops.convert_to_tensor(yiq_to_rgb), chroma), ops.convert_to_tensor(rgb_to_yiq))
            x = ops.cast(images, "float32")
            out = ops.einsum("bhwc,bdc->bhwd", x, full)
            return ops.cast(ops.clip(out, 0.0, 255.0), dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "hue": self.hue, "saturation": self.saturation,
                    "grayscale": self.grayscale, "seed": self.seed}

    return RandomColor


@keras_class
def _random_conv_class(keras):
    """keras.layers.Layer: RandConv (Xu et al., "Robust and Generalizable Visual Representation Learning via
    Random Convolutions", ICLR 2021), the mixing variant. Once per batch a random convolution is drawn: a
    k x k kernel, k one of 1, 3, 5, 7, weights from N(0, 1 / (k * k * channels)), channels in = out. Each
    image is, with probability `p`, replaced by alpha * image + (1 - alpha) * conv(image), alpha ~ U(0, 1) per
    image, on pixels scaled to [-1, 1] and clipped back to 0..255 (edges padded by mirroring). A random
    convolution changes local texture, shading and colours and keeps shapes: a drawing-style or texture
    shift between training images and the ones a model will see. Defined on first use so that importing this
    module does not import Keras."""
    ops = keras.ops

    max_k = 7

    class RandomConv(keras.layers.Layer):
        def __init__(self, p=0.5, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.p, self.seed = float(p), seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=True):
            h = max_k // 2
            if not training or any(d is not None and d < h for d in images.shape[1:3]):
                return images  # (mirrored padding needs a side of at least 3 px)
            c = images.shape[-1]
            x = ops.cast(images, "float32")
            n = ops.shape(x)[0]
            apply = ops.reshape(keras.random.uniform((n,), 0.0, 1.0, seed=self.generator) < self.p, (-1, 1, 1, 1))
            z = x / 127.5 - 1.0
            k = ops.take(ops.convert_to_tensor([1.0, 3.0, 5.0, 7.0]),
                         ops.cast(keras.random.uniform((), 0.0, 4.0, seed=self.generator), "int32"))
            # a k x k kernel inside a fixed 7 x 7 one (static shapes): taps outside the centre k x k are 0
            r = ops.abs(ops.arange(max_k, dtype="float32") - (max_k - 1) / 2)
            inside = ops.cast(r <= (k - 1.0) / 2.0, "float32")
            mask = ops.reshape(inside[:, None] * inside[None, :], (max_k, max_k, 1, 1))
            w = keras.random.normal((max_k, max_k, c, c), seed=self.generator) * mask / ops.sqrt(k * k * c)
            out = ops.conv(ops.pad(z, ((0, 0), (h, h), (h, h), (0, 0)), mode="symmetric"), w, padding="valid")
            a = keras.random.uniform((n, 1, 1, 1), 0.0, 1.0, seed=self.generator)
            styled = (ops.clip(a * z + (1.0 - a) * out, -1.0, 1.0) + 1.0) * 127.5
            return ops.cast(ops.where(apply, styled, x), images.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "p": self.p, "seed": self.seed}

    return RandomConv


def _output_name(src_file: Path, k: int) -> str:
    return f"{src_file.stem}_aug{k}{src_file.suffix.lower() if src_file.suffix else '.png'}"


def augment_folder(src, dest, cfg: AugmentConfig, per_image: Optional[int] = None,
                   target_per_class: Optional[int] = None, seed: int = DEFAULT_SEED, mode: str = SPLIT_MODE,
                   force: bool = False, progress: Optional[Callable[[int, int], None]] = None) -> Dict:
    """Write augmented copies of a class-folder tree (or of train/ of a split root) to DEST.

    `per_image` N: N new images per original. `target_per_class` N: top each class up to N images.
    Originals are copied (or linked) too, so DEST is a complete training set."""
    from imgclf.data.scan import find_split_dirs, require_trainable, scan

    src, dest = Path(src), Path(dest)
    if (per_image is None) == (target_per_class is None):
        raise UsageError("give exactly one of --per-image N or --target-per-class N")
    if (per_image is not None and per_image < 1) or (target_per_class is not None and target_per_class < 1):
        raise UsageError("--per-image / --target-per-class must be at least 1")
    if not cfg.active:
        raise UsageError("no augmentation operation chosen: give --policy light|medium|heavy or an op "
                         "such as --rotate 15")
    if mode not in SPLIT_MODES:
        raise UsageError(f"--mode must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")
    if not src.is_dir():
        raise DataError(f"{src}: folder not found")
    splits = find_split_dirs(src)
    tree = splits["train"] if splits else src
    if dest.exists() and any(dest.iterdir()) and not force:
        raise DataError(f"{dest}: folder is not empty (use --force to write into it)")
    ds = scan(tree, deep=True)
    require_trainable(ds)
    aug = build_augmenter(cfg, seed)
    plan = _plan(ds, per_image, target_per_class, np.random.default_rng(seed))

    out_root = dest / "train" if splits else dest
    originals = _place_originals(ds, tree, out_root, mode)
    if splits:  # val/ and test/ are copied untouched: never augmented
        for name in ("val", "test"):
            if name in splits:
                shutil.copytree(splits[name], dest / name, dirs_exist_ok=True, symlinks=True)
    written, failed = _write_augmented(plan, ds, tree, out_root, aug, progress)
    per_class = ds.counts()
    for label, n in written.items():
        per_class[ds.class_names[label]] += n
    return {"dest": str(dest), "originals": originals, "augmented": sum(written.values()),
            "problems": ds.problems + failed, "per_class": per_class}


def _plan(ds, per_image: Optional[int], target_per_class: Optional[int], rng) -> List[Tuple[object, int]]:
    """(sample, k) for every augmented file to write: k numbers the copies of one original."""
    by_class: Dict[int, List] = {}
    for s in ds.samples:
        by_class.setdefault(s.label, []).append(s)
    plan = []
    for label, samples in sorted(by_class.items()):
        samples = sorted(samples, key=lambda s: s.path)
        if per_image is not None:
            plan += [(s, k) for s in samples for k in range(1, per_image + 1)]
            continue
        seen: Dict[str, int] = {}
        for i in rng.integers(0, len(samples), size=max(0, target_per_class - len(samples))):
            s = samples[int(i)]
            seen[s.path] = seen.get(s.path, 0) + 1
            plan.append((s, seen[s.path]))
    return plan


def _place_originals(ds, tree: Path, out_root: Path, mode: str) -> int:
    from imgclf.data.split import place_file

    for s in ds.samples:
        cls = ds.class_names[s.label]
        target = out_root / cls / Path(os.path.relpath(s.path, tree / cls))
        if target.exists() or target.is_symlink():  # DEST was given with --force
            target.unlink()
        place_file(s.path, target, mode)
    return len(ds.samples)


def _write_augmented(plan, ds, tree: Path, out_root: Path, aug, progress) -> Tuple[Dict[int, int], List[ImageError]]:
    """Decode, augment and save each planned copy next to where its original went. Returns (files written per
    class label, images that could not be decoded)."""
    from PIL import Image

    from imgclf.preprocessing import is_grayscale_mode, load_full

    written: Dict[int, int] = {}
    failed: List[ImageError] = []
    for n, (s, k) in enumerate(plan):
        cls = ds.class_names[s.label]
        rel = Path(os.path.relpath(s.path, tree / cls))
        channels = 1 if is_grayscale_mode(s.mode) else 3
        try:
            pixels = load_full(s.path, channels)
        except ImageError as e:
            failed.append(e)
            continue
        out = np.asarray(aug(pixels[None].astype("float32"), training=True))[0]
        out = np.clip(np.round(out), 0, 255).astype(np.uint8)
        target = out_root / cls / rel.parent / _output_name(rel, k)
        img = Image.fromarray(out[:, :, 0] if channels == 1 else out, "L" if channels == 1 else "RGB")
        fmt_ext = target.suffix.lower()
        if fmt_ext in (".jpg", ".jpeg"):
            img.save(target, quality=95)
        elif fmt_ext in (".png", ".bmp", ".tif", ".tiff", ".webp"):
            img.save(target)
        else:  # gif and others: keep the colours exact
            img.save(target.with_suffix(".png"))
        written[s.label] = written.get(s.label, 0) + 1
        if progress:
            progress(n + 1, len(plan))
    return written, failed
