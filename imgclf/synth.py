"""`imgclf synth`: synthetic training images for scarce classes, from a small class-conditional GAN.

    DATA (train/ only) -> decode at the GAN's size (preprocessing.load_image) -> train the GAN
      -> the generator to the registry (kind "generator") -> OUT/<class>/synth_<n>.png + OUT/synth_grid.png

The GAN is SNGAN-style (Miyato et al. 2018), built for a few hundred images:
- generator: (noise, class embedding) -> dense -> [upsample, 3x3 conv, batch-norm, ReLU] x k -> tanh;
- discriminator: spectrally normalised convolutions, and a projection head (Miyato & Koyama 2018): the
  score of (image, class) is w.h + embed(class).h for the image features h;
- hinge loss, Adam(2e-4, 0.0, 0.9), and a moving average of the generator's weights (what is saved);
- DiffAugment (Zhao et al. 2020): colour, translation and cutout applied, differentiably, to every image the
  discriminator sees, real and generated, so it cannot memorise a few dozen real images.

Every written PNG carries SYNTH_MARKER in a tEXt chunk and is named synth_<n>.png, so scan and split can
keep it out of val/ and test/. Image n of a class is drawn from noise seeded by (seed, class, n): numbers
continue after the synth_ files already in OUT, so asking again makes new images and never overwrites.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from imgclf import config as C
from imgclf import registry as reg
from imgclf.errors import DataError, ModelError, UsageError

KIND = "generator"
GRID_FILE = "synth_grid.png"
SAMPLES_FILE = "samples.png"  # the grid, kept in the generator's registry folder
GRID_NUMBERS = 10 ** 9  # the grid's images are numbers 10**9.. of each class: never among the files written
_NUMBERED = re.compile(rf"^{re.escape(C.SYNTH_NAME_PREFIX)}(\d+)\.png$", re.IGNORECASE)


# ------------------------------------------------------------------------------------- arguments
def parse_classes(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise UsageError("--classes: give class names separated by commas, e.g. --classes cat,dog")
    return names


def check_counts(per_class: Optional[int], target_per_class: Optional[int], from_model: bool) -> None:
    if per_class is not None and target_per_class is not None:
        raise UsageError("give only one of --per-class N (new images per class) and --target-per-class N "
                         "(top each class up to N images)")
    for opt, v in (("--per-class", per_class), ("--target-per-class", target_per_class)):
        if v is not None and v < 1:
            raise UsageError(f"{opt} must be at least 1, got {v}")
    if from_model and per_class is None:
        raise UsageError("--from: give --per-class N (the generator does not know how many real images "
                         "each class has, so --target-per-class needs DATA)")


def check_image_size(size: int) -> int:
    """Sizes the generator can make: 4 to 8 pixels doubled k >= 1 times (8, 10, 12, 14, 16, 20, 24, 28, 32, ...)."""
    base, ups = _base_size(size)
    if not (8 <= size <= 256) or ups < 1:
        raise UsageError(f"--image-size must be 8 to 256 and 4-8 pixels doubled (e.g. 16, 28, 32, 48, 64), "
                         f"got {size}")
    return size


def _base_size(size: int) -> Tuple[int, int]:
    """(the generator's first map size, number of doublings); the base is at most 8."""
    base, ups = size, 0
    while base % 2 == 0 and (base > 8 or (ups == 0 and base > 4)):  # 8 px: 4 doubled once
        base, ups = base // 2, ups + 1
    return base, ups if 4 <= base <= 8 else 0


def default_image_size(data_size: int) -> int:
    """The largest size the generator can make that is at most the data's size and SYNTH_MAX_DEFAULT_SIZE."""
    for s in range(min(data_size, C.SYNTH_MAX_DEFAULT_SIZE), 7, -1):
        if _base_size(s)[1] >= 1:
            return s
    raise DataError(f"images of {data_size} px are too small for synth (8 px at least)")


def check_out(data: Optional[Path], out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if data is None:
        return
    d, o = data.resolve(), out.resolve()
    if o == d or d in o.parents:
        raise UsageError(f"{out}: OUT must not be inside DATA ({data}); synthetic images there would be "
                         "trained and split as real ones")


def plan_counts(class_names: Sequence[str], counts: Dict[str, int], classes: Optional[List[str]],
                per_class: Optional[int], target: Optional[int]) -> Dict[str, int]:
    """class -> images to write. Default: top every class up to the largest class's count."""
    unknown = [c for c in classes or [] if c not in class_names]
    if unknown:
        raise UsageError(f"--classes: unknown class(es) {', '.join(unknown)} (known: {', '.join(class_names)})")
    chosen = classes or list(class_names)
    if per_class is not None:
        return {c: per_class for c in chosen}
    top = target if target is not None else max(counts.values())
    return {c: max(0, top - counts.get(c, 0)) for c in chosen}


# ------------------------------------------------------------------------------------- the data
def load_training_images(data: Path, image_size: Optional[int], reporter) -> dict:
    """The real training images of DATA (train/ of a split root), decoded at the GAN's size with the one
    preprocessing code (mixed sizes are resized, modes converted). Synthetic files are left out."""
    from imgclf.data.files import map_in_order
    from imgclf.data.scan import find_split_dirs, require_trainable, scan
    from imgclf.preprocessing import PreprocessingSpec, is_grayscale_mode, load_image

    if not data.is_dir():
        raise DataError(f"{data}: folder not found")
    dirs = find_split_dirs(data)
    ds = scan(dirs["train"] if dirs else data, deep=True)
    require_trainable(ds)
    for p in ds.problems:
        reporter.warn(f"skipped {p.path}: {p.reason}")
    real = [s for s in ds.samples if not s.synthetic]
    if len(real) < len(ds.samples):
        reporter.info(f"left out {len(ds.samples) - len(real)} synthetic images of {ds.root} (the GAN learns "
                      "from real images only)")
    counts = {c: 0 for c in ds.class_names}
    for s in real:
        counts[ds.class_names[s.label]] += 1
    few = {c: n for c, n in counts.items() if n < C.SYNTH_MIN_IMAGES}
    if few:
        raise DataError(f"{ds.root}: class(es) with fewer than {C.SYNTH_MIN_IMAGES} real training images: "
                        + ", ".join(f"{c} ({n})" for c, n in few.items()))
    sizes = {(s.width, s.height) for s in real}
    data_size = int(np.median([min(s.width, s.height) for s in real]))
    size = check_image_size(image_size) if image_size is not None else default_image_size(data_size)
    channels = 1 if all(is_grayscale_mode(s.mode) for s in real) else 3
    if sizes != {(size, size)}:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3]) + (" ..." if len(sizes) > 3 else "")
        reporter.info(f"images of {len(sizes)} size(s) ({shown}) resized to {size}x{size}")
    spec = PreprocessingSpec(image_size=(size, size), channels=channels)
    pixels = np.stack(map_in_order(lambda s: load_image(s.path, spec), real))
    return {"root": ds.root, "class_names": ds.class_names, "counts": counts, "pixels": pixels,
            "labels": np.array([s.label for s in real], dtype=np.int32), "image_size": size, "channels": channels}


# ------------------------------------------------------------------------------------- the networks
def build_generator(num_classes: int, latent_dim: int, size: int, channels: int):
    """(noise, class) -> image in [-1, 1]."""
    import keras
    from keras import layers

    base, ups = _base_size(size)
    width = C.SYNTH_WIDTH * 2 ** ups  # 64 channels at 7x7 for 28 px, halved at each doubling
    z = keras.Input((latent_dim,), name="noise")
    y = keras.Input((), dtype="int32", name="label")
    e = layers.Flatten()(layers.Embedding(num_classes, latent_dim, name="class_embedding")(y[:, None]))
    x = layers.Concatenate()([z, e])
    x = layers.Dense(base * base * width, use_bias=False)(x)
    x = layers.Reshape((base, base, width))(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for _ in range(ups):
        width //= 2
        x = layers.UpSampling2D(interpolation="nearest")(x)
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
    out = layers.Conv2D(channels, 3, padding="same", activation="tanh", name="image")(x)
    return keras.Model([z, y], out, name="generator")


def build_discriminator(num_classes: int, size: int, channels: int):
    """(image, class) -> a score (hinge loss); spectral normalisation on every weight, projection head."""
    import keras
    from keras import layers

    def sn(layer):
        return layers.SpectralNormalization(layer)

    _, downs = _base_size(size)
    width = C.SYNTH_WIDTH
    img = keras.Input((size, size, channels), name="image")
    y = keras.Input((), dtype="int32", name="label")
    x = layers.LeakyReLU(0.1)(sn(layers.Conv2D(width, 3, padding="same"))(img))
    for _ in range(downs):
        width *= 2
        x = layers.LeakyReLU(0.1)(sn(layers.Conv2D(width, 4, strides=2, padding="same"))(x))
        x = layers.LeakyReLU(0.1)(sn(layers.Conv2D(width, 3, padding="same"))(x))
    h = layers.GlobalAveragePooling2D()(x)
    score = sn(layers.Dense(1))(h)
    onehot = layers.CategoryEncoding(num_classes, output_mode="one_hot")(y[:, None])
    embed = sn(layers.Dense(width, use_bias=False, name="class_projection"))(onehot)
    proj = layers.Dot(axes=1)([embed, h])
    return keras.Model([img, y], layers.Add()([score, proj]), name="discriminator")


def diff_augment(x, channels: int):
    """DiffAugment's colour + translation (1/8) + cutout (1/2), per image, differentiable; x in [-1, 1]."""
    import tensorflow as tf
    from keras import ops

    n = tf.shape(x)[0]
    size = x.shape[1]

    def rand():
        return tf.random.uniform(tf.stack([n, 1, 1, 1]))

    x = x + (rand() - 0.5)  # brightness
    if channels == 3:
        mean = tf.reduce_mean(x, axis=3, keepdims=True)
        x = (x - mean) * (rand() * 2.0) + mean  # saturation
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * (rand() + 0.5) + mean  # contrast
    shift = max(1, round(size * 0.125))
    t = tf.cast(tf.random.uniform([n, 2], -shift, shift + 1, dtype=tf.int32), tf.float32)
    one, zero = tf.ones([n]), tf.zeros([n])
    transform = tf.stack([one, zero, -t[:, 0], zero, one, -t[:, 1], zero, zero], axis=1)
    x = ops.image.affine_transform(x, transform, interpolation="nearest", fill_mode="constant")
    half = size // 2
    centre = tf.random.uniform([n, 2], 0, size, dtype=tf.int32)
    grid = tf.range(size)
    rows = tf.abs(grid[None, :] - centre[:, :1]) < (half + 1) // 2
    cols = tf.abs(grid[None, :] - centre[:, 1:]) < (half + 1) // 2
    hole = tf.cast(tf.logical_and(rows[:, :, None], cols[:, None, :]), x.dtype)
    return x * (1.0 - hole[..., None])


# ------------------------------------------------------------------------------------- training
class GanTrainer:
    """Both networks, their optimisers and the moving average of the generator; `step` is one update of
    each on a batch of real images (uint8) and their labels."""

    def __init__(self, num_classes: int, size: int, channels: int, latent_dim: int = C.SYNTH_LATENT_DIM):
        import keras
        import tensorflow as tf

        # grappler's remapper trips over the spectral norm's gradient and logs an error line (harmless)
        tf.config.optimizer.set_experimental_options({"remapping": False})
        self.latent_dim, self.channels = latent_dim, channels
        self.g = build_generator(num_classes, latent_dim, size, channels)
        self.d = build_discriminator(num_classes, size, channels)
        self.g_ema = keras.models.clone_model(self.g)
        self.g_ema.set_weights(self.g.get_weights())
        b1, b2 = C.SYNTH_BETAS
        self.g_opt = keras.optimizers.Adam(C.SYNTH_LR, beta_1=b1, beta_2=b2)
        self.d_opt = keras.optimizers.Adam(C.SYNTH_LR, beta_1=b1, beta_2=b2)
        self.g_opt.build(self.g.trainable_variables)
        self.d_opt.build(self.d.trainable_variables)
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step = tf.function(self._step)

    def _step(self, real_uint8, labels):
        import tensorflow as tf

        real = tf.cast(real_uint8, tf.float32) / 127.5 - 1.0
        n = tf.shape(real)[0]
        aug = lambda x: diff_augment(x, self.channels)  # noqa: E731
        with tf.GradientTape() as tape:
            fake = self.g([tf.random.normal([n, self.latent_dim]), labels], training=True)
            d_real = self.d([aug(real), labels], training=True)
            d_fake = self.d([aug(fake), labels], training=True)
            d_loss = tf.reduce_mean(tf.nn.relu(1.0 - d_real)) + tf.reduce_mean(tf.nn.relu(1.0 + d_fake))
        grads = tape.gradient(d_loss, self.d.trainable_variables)
        self.d_opt.apply_gradients(zip(grads, self.d.trainable_variables))
        with tf.GradientTape() as tape:
            fake = self.g([tf.random.normal([n, self.latent_dim]), labels], training=True)
            g_loss = -tf.reduce_mean(self.d([aug(fake), labels], training=True))
        grads = tape.gradient(g_loss, self.g.trainable_variables)
        self.g_opt.apply_gradients(zip(grads, self.g.trainable_variables))
        self.steps.assign_add(1)
        s = tf.cast(self.steps, tf.float32)
        decay = tf.minimum(C.SYNTH_EMA_DECAY, (1.0 + s) / (10.0 + s))  # short runs: follow the weights
        for avg, w in zip(self.g_ema.weights, self.g.weights):
            avg.assign(decay * avg + (1.0 - decay) * w)
        return d_loss, g_loss


def class_weights(labels: np.ndarray, num_classes: int, power: float = C.SYNTH_CLASS_POWER) -> np.ndarray:
    """Per-image sampling probabilities: class c drawn in proportion to count_c ** power."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    per_class = np.where(counts > 0, counts ** power, 0.0)
    p = (per_class / per_class.sum())[labels] / counts[labels]
    return p / p.sum()


def train_gan(images: dict, epochs: Optional[int], seed: int, reporter) -> Tuple[object, dict]:
    """Train on `images` (load_training_images); (the averaged generator, a summary for the metadata)."""
    from imgclf.tf_quiet import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    pixels, labels = images["pixels"], images["labels"]
    k = len(images["class_names"])
    batch = min(C.SYNTH_BATCH_SIZE, len(labels))
    per_epoch = max(1, len(labels) // batch)
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    epochs = epochs or max(1, math.ceil(C.SYNTH_STEPS / per_epoch))
    total = epochs * per_epoch
    rng = np.random.default_rng(seed)
    p = class_weights(labels, k)
    trainer = GanTrainer(k, images["image_size"], images["channels"])
    reporter.info(f"training the GAN: {len(labels)} real images, {k} classes, {images['image_size']} px, "
                  f"{epochs} epochs of {per_epoch} steps")
    t0, losses = time.process_time(), (0.0, 0.0)
    with reporter.epoch_bar("synth GAN", total) as bar:
        for step in range(1, total + 1):
            idx = rng.choice(len(labels), size=batch, p=p)
            d_loss, g_loss = trainer.step(pixels[idx], labels[idx])
            if step % 10 == 0 or step == total:
                losses = (float(d_loss), float(g_loss))
                bar.update(step, f"epoch {1 + (step - 1) // per_epoch}/{epochs} d {losses[0]:.3f} "
                                 f"g {losses[1]:.3f}")
    reporter.info(f"trained {total} steps; last losses: discriminator {losses[0]:.3f}, generator "
                  f"{losses[1]:.3f}")
    return trainer.g_ema, {"epochs": epochs, "steps": total, "batch_size": batch, "cpu_seconds":
                           round(time.process_time() - t0, 1), "d_loss": losses[0], "g_loss": losses[1]}


# ------------------------------------------------------------------------------------- sampling and files
def generate(generator, class_index: int, numbers: Sequence[int], seed: int, latent_dim: int) -> np.ndarray:
    """uint8 images (N, H, W, C) for image numbers `numbers` of one class: each from noise seeded by
    (seed, class, number), so the same number always gives the same image."""
    out = []
    for i in range(0, len(numbers), 256):
        chunk = numbers[i:i + 256]
        z = np.stack([np.random.default_rng([seed, class_index, n]).standard_normal(latent_dim)
                      for n in chunk]).astype(np.float32)
        x = np.asarray(generator([z, np.full(len(chunk), class_index, np.int32)], training=False))
        out.append(np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)


def existing_numbers(folder: Path) -> List[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name)))


def _png(arr: np.ndarray, path: Path, marker: dict) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(C.SYNTH_MARKER, json.dumps(marker, sort_keys=True))
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")
    tmp = path.with_name(f".{path.name}.tmp")
    im.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)


def write_images(generator, meta: dict, out: Path, plan: Dict[str, int], seed: int, force: bool,
                 progress: Callable[[int], None]) -> Dict[str, List[str]]:
    """OUT/<class>/synth_<n>.png for each class of `plan`; n continues after the synth_ files there
    (--force: from 1, replacing them)."""
    names = meta["class_names"]
    written: Dict[str, List[str]] = {}
    done = 0
    for cls, count in plan.items():
        folder = out / cls
        have = [] if force else existing_numbers(folder)
        start = (max(have) if have else 0) + 1
        numbers = list(range(start, start + count))
        written[cls] = []
        if not count:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        images = generate(generator, names.index(cls), numbers, seed, meta["latent_dim"])
        for n, arr in zip(numbers, images):
            path = folder / f"{C.SYNTH_NAME_PREFIX}{n}.png"
            _png(arr, path, {"generator": meta.get("label"), "class": cls, "seed": seed, "number": n})
            written[cls].append(str(path))
            done += 1
            progress(done)
    return written


def grid_image(generator, meta: dict, seed: int, columns: int = C.SYNTH_GRID_COLUMNS):
    """A PIL image: one row per class (its name on the left), `columns` samples each, scaled up to >= 48 px."""
    from PIL import Image, ImageDraw

    names, size = meta["class_names"], meta["image_size"]
    cell = size * max(1, math.ceil(48 / size))
    label_w = 8 + 7 * max(len(n) for n in names)
    grid = Image.new("RGB", (label_w + columns * (cell + 2), len(names) * (cell + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for row, name in enumerate(names):
        y = row * (cell + 2)
        draw.text((4, y + cell // 2 - 5), name, fill="black")
        for col, arr in enumerate(generate(generator, row, [GRID_NUMBERS + c for c in range(columns)], seed,
                                                  meta["latent_dim"])):
            im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
            grid.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (label_w + col * (cell + 2), y))
    return grid


def free_name(out: Path, name: str, force: bool) -> Path:
    """OUT/name, or OUT/stem_2.png, _3, ... when it exists (never overwritten without --force)."""
    path = out / name
    k = 2
    while path.exists() and not force:
        path = out / f"{Path(name).stem}_{k}{Path(name).suffix}"
        k += 1
    return path


# ------------------------------------------------------------------------------------- the registry
def save_generator(registry, name: str, generator, meta: dict, grid) -> dict:
    """A new registry version of kind "generator": model.keras, metadata.json, samples.png."""
    reg.check_name(name)
    root = reg.root_of(registry)
    staging = reg.new_staging(root, name)
    generator.save(staging / reg.KERAS_FILE)
    grid.save(staging / SAMPLES_FILE)
    version, path = reg.commit(root, staging, name, meta)
    return dict(meta, name=name, version=version, path=str(path), label=f"{name}:{version}")


def load_generator(ref: reg.ModelRef):
    if ref.metadata.get("kind") != KIND:
        raise ModelError(f"{ref.label}: not a generator (kind {ref.metadata.get('kind', 'classifier')}); "
                         "--from takes a model made by `imgclf synth`")
    from imgclf.tf_quiet import import_keras

    keras = import_keras()
    try:
        return keras.models.load_model(ref.keras_path, compile=False, safe_mode=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"{ref.keras_path}: cannot load the generator ({e})") from None


def _metadata(images: dict, summary: dict, seed: int, data: Path) -> dict:
    import keras
    import tensorflow as tf

    import imgclf

    return {"kind": KIND, "arch": "cgan", "class_names": images["class_names"], "image_size": images["image_size"],
            "channels": images["channels"], "latent_dim": C.SYNTH_LATENT_DIM, "seed": seed,
            "training_data": images["root"], "data": str(data), "train_counts": images["counts"],
            "training": summary, "loss": "hinge", "stabilisers": ["spectral_norm", "diffaugment",
                                                                  "projection_discriminator", "ema_generator"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": {},
            "versions": {"imgclf": imgclf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}}


# ------------------------------------------------------------------------------------- entry points
def synth(data: Optional[Path], out: Path, *, from_model: Optional[str] = None, classes: Optional[str] = None,
          per_class: Optional[int] = None, target_per_class: Optional[int] = None, epochs: Optional[int] = None,
          image_size: Optional[int] = None, seed: int = C.DEFAULT_SEED, name: Optional[str] = None,
          registry=None, force: bool = False, reporter=None) -> dict:
    """Train a generator on DATA (or load --from NAME) and write synthetic images to OUT. The result:
    generator (its registry label and path), written (class -> paths), grid (path)."""
    names = parse_classes(classes)
    check_counts(per_class, target_per_class, from_model is not None)
    check_out(data, out)
    if from_model is not None:
        if epochs is not None or image_size is not None:
            raise UsageError("--epochs and --image-size apply when training; --from uses the saved generator")
        ref = reg.resolve(registry, from_model)
        generator = load_generator(ref)
        meta = dict(ref.metadata, label=ref.label, path=str(ref.path))
        plan = plan_counts(meta["class_names"], {}, names, per_class, None)
    else:
        images = load_training_images(data, image_size, reporter)
        plan = plan_counts(images["class_names"], images["counts"], names, per_class, target_per_class)
        generator, summary = train_gan(images, epochs, seed, reporter)
        meta = _metadata(images, summary, seed, data)
        grid = grid_image(generator, meta, seed)
        meta = save_generator(registry, name or reg.safe_name(f"{Path(data).resolve().name}-synth"), generator,
                              meta, grid)
        reporter.info(f"saved generator {meta['label']} ({meta['path']})")
    return _write_outputs(generator, meta, out, plan, seed, force, reporter)


def _write_outputs(generator, meta: dict, out: Path, plan: Dict[str, int], seed: int, force: bool,
                   reporter) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    total = sum(plan.values())
    with reporter.progress("writing images", total=total) as advance:
        written = write_images(generator, meta, out, plan, seed, force, advance)
    grid_path = free_name(out, GRID_FILE, force)
    grid_image(generator, meta, seed).save(grid_path)
    reporter.info(f"wrote {total} synthetic images to {out} ({', '.join(f'{c} {n}' for c, n in plan.items())}); "
                  f"sample grid {grid_path}")
    return {"generator": meta["label"], "generator_path": meta["path"], "out": str(out), "grid": str(grid_path),
            "per_class": {c: len(p) for c, p in written.items()}, "written": written}
