"""Typed configuration: the single home of imgclf's defaults, validated up front. The CLI's option
defaults and the library's keyword defaults both read the constants below.

`imgclf train` fills an option in this order, a later step winning over an earlier one:
  1. the architecture's own default (only the image size: 224 for MobileNet; cnn/mlp: chosen from the
     data, see train.choose_spec), used when nothing below sets it;
  2. the defaults by how the network starts (SCRATCH_DEFAULTS or PRETRAINED_DEFAULTS, adjusted to the
     number of training images: see resolve). For a pretrained network these include the image size, so
     PRETRAINED_DEFAULTS' 160 px wins over MobileNet's own 224 (which applies with --weights none);
  3. the command-line options (or, with --resume, the configuration the run was started with).
`resolve` is the one function that does steps 2 and 3; it returns a new TrainConfig.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from imgclf.errors import UsageError

#: image file extensions imgclf reads (matched case-insensitively; content decides the real format)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: file names that are OS debris, never images
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db"}
#: images with more pixels than this are refused before decoding (decompression bombs)
MAX_PIXELS = 89_478_485
#: colour that transparent pixels are composited on
BACKGROUND = (255, 255, 255)
#: image sizes allowed for the MobileNet family: the ImageNet weights' sizes, and larger ones for photos with
#: small objects (the backbone is fully convolutional; issue 34, docs/benchmarks.md "Photo defaults")
MOBILENET_SIZES = (96, 128, 160, 192, 224, 288, 320, 384, 448)

AUGMENT_POLICIES = {
    # name: (flip, rotate degrees, shift fraction, zoom fraction, brightness fraction, contrast fraction,
    #        hue fraction of a turn, saturation fraction, grayscale probability, shift in whole pixels,
    #        probability of a random-convolution restyle, smallest area share of a random resized crop)
    "none": dict(flip="none", rotate=0.0, shift=0.0, zoom=0.0, brightness=0.0, contrast=0.0,
                 hue=0.0, saturation=0.0, grayscale=0.0, shift_px=0, randconv=0.0, crop=0.0),
    # the default from scratch (runs of COSINE_MIN_STEPS or more): every image moved by up to 1 whole pixel,
    # nothing else (Fashion-MNIST, 9 epochs: +0.13-0.15 val and +0.2 test accuracy on two seeds at the same
    # CPU, and the cnn no longer fits its training images by then, so more epochs pay; docs/benchmarks-history.md)
    "pixel": dict(flip="none", rotate=0.0, shift=0.0, zoom=0.0, brightness=0.0, contrast=0.0,
                  hue=0.0, saturation=0.0, grayscale=0.0, shift_px=1, randconv=0.0, crop=0.0),
    "light": dict(flip="horizontal", rotate=5.0, shift=0.05, zoom=0.05, brightness=0.0, contrast=0.0,
                  hue=0.0, saturation=0.0, grayscale=0.0, shift_px=0, randconv=0.0, crop=0.0),
    "medium": dict(flip="horizontal", rotate=15.0, shift=0.1, zoom=0.1, brightness=0.1, contrast=0.1,
                   hue=0.0, saturation=0.0, grayscale=0.0, shift_px=0, randconv=0.0, crop=0.0),
    # the default pretrained: medium, and half the images restyled by a random convolution (RandConv: texture,
    # shading and colours changed, shapes kept). Emoji google -> style proxy, mean of 3 seeds: +1.6 points on
    # the proxy and +1.2 on google val over medium at 1.07x the CPU (docs/benchmarks-history.md, eleventh session)
    "style": dict(flip="horizontal", rotate=15.0, shift=0.1, zoom=0.1, brightness=0.1, contrast=0.1,
                  hue=0.0, saturation=0.0, grayscale=0.0, shift_px=0, randconv=0.5, crop=0.0),
    "heavy": dict(flip="horizontal", rotate=30.0, shift=0.2, zoom=0.2, brightness=0.25, contrast=0.25,
                  hue=0.0, saturation=0.0, grayscale=0.0, shift_px=0, randconv=0.0, crop=0.0),
}
#: the colour operations (hue, saturation, grayscale) change RGB images only; grayscale images pass unchanged
COLOR_OPS = ("hue", "saturation", "grayscale")
#: the smallest --crop (share of the image area a random resized crop keeps; torchvision's default scale starts here)
MIN_CROP_AREA = 0.08
#: the largest --shift-px
MAX_SHIFT_PX = 64
FLIP_MODES = ("none", "horizontal", "vertical", "both")

#: `--arch auto` (the default) picks PRETRAINED_ARCH for colour images whose typical (median) short side
#: is at least AUTO_PRETRAINED_MIN_SIZE px, else the cnn; see imgclf/arch_choice.py and docs/benchmarks-history.md
#: (emoji at 32, 48 and 64 px: the pretrained network ahead of the cnn by 11 points or more at each size)
AUTO_ARCH = "auto"
PRETRAINED_ARCH = "mobilenet_v2"
AUTO_PRETRAINED_MIN_SIZE = 32
#: the defaults of the options left unset, by how the network starts (see resolve):
#: trained from scratch (cnn, mlp, MobileNet --weights none) or from pretrained weights
#: (measured in docs/benchmarks-history.md, "Better models by default")
SCRATCH_DEFAULTS = dict(epochs=15, batch_size=64, lr=1e-3, fine_tune_epochs=0, fine_tune_layers=0.3,
                        augment_policy="pixel", lr_schedule="cosine", label_smoothing=0.1, memory=0.0)
#: from scratch, a run that is COSINE_MIN_STEPS steps or more long even at this batch size gets it, and this
#: learning rate unless --lr is given (Fashion-MNIST, 11 epochs, seeds 42 / 7: val +0.20 / +0.06, test
#: -0.08 / +0.26 points against batch 64 with lr 1e-3, at 0.95x its CPU; docs/benchmarks-history.md)
SCRATCH_LONG_RUN = dict(batch_size=128, lr=2e-3)
#: from scratch, large data sets get fewer than SCRATCH_DEFAULTS' epochs: about this many training images
#: in all (12 epochs of Fashion-MNIST's 54,000 at SCRATCH_LONG_RUN's batch; ~1,160-1,215 CPU-seconds on
#: 2 cores, 93.84-94.17% test over three seeds; docs/benchmarks-history.md)
SCRATCH_IMAGE_BUDGET = 648_000
#: from scratch, a run of fewer optimizer steps than this gets the plateau schedule instead of cosine
#: (on the 480-image quickstart, 120 steps, cosine's shrinking steps cost ~0.6 points) and no augmentation
#: instead of the `pixel` policy (counted at one replica: batch_size images a step; docs/benchmarks-history.md)
COSINE_MIN_STEPS = 1_000
#: a pretrained network on photos (typical short side at least PHOTO_MIN_SIDE px) reads them at
#: PHOTO_IMAGE_SIZE px instead of PRETRAINED_DEFAULTS' 160 (unless --image-size is given; arch_choice.py):
#: a small object anywhere in the frame keeps twice the pixels. Photo-like sets with objects at 3-12% of the
#: short side: dev set 0.94-0.95 at 160 -> 0.99 at 224 (docs/benchmarks.md, "Photo defaults (issue 34)")
PHOTO_MIN_SIDE = 224
PHOTO_IMAGE_SIZE = 224
PRETRAINED_DEFAULTS = dict(epochs=6, batch_size=64, lr=1e-3, fine_tune_epochs=4, fine_tune_layers=0.3,
                           augment_policy="style", image_size=160, lr_schedule="plateau", label_smoothing=0.0, memory=0.5)
#: a pretrained network on fewer than PRETRAINED_SMALL_SET["images"] training images takes batches of
#: PRETRAINED_SMALL_SET["batch_size"] (unless --batch-size is given): four times the optimizer steps in the same
#: epochs and time. 240 photos of small emoji (set B): 24 head steps at 64 ended at 0.57 training accuracy;
#: at 16, B_dev 0.645 -> 0.705, B_held 0.625 -> 0.730; set S unchanged at 1.0 (docs/benchmarks.md, issue 34)
PRETRAINED_SMALL_SET = dict(images=1_000, batch_size=16)
#: a pretrained network on photos (as above) with fewer than PHOTO_SMALL_SET["images"] training images reads
#: them at PHOTO_SMALL_SET["image_size"] and fine-tunes deeper and longer (each unless given: --image-size,
#: --fine-tune-layers, --fine-tune-epochs; arch_choice.py). On 240 photos of small emoji (set B) the 224 px
#: default reached 0.675 on B_dev, and its fine-tuning ended far from fitting its training images; this recipe
#: B_dev 0.895, B_held 0.935 at 6x the train CPU (577 CPU-s) (docs/benchmarks.md, "Photo defaults (issue 34)")
PHOTO_SMALL_SET = dict(images=1_000, image_size=384, fine_tune_layers=0.6, fine_tune_epochs=16)
#: the nearest-neighbour memory (imgclf/memory.py): the training images' features stored in the model, their
#: vote blended with the head's answer at --memory (default: PRETRAINED_DEFAULTS' 0.5 up to
#: MEMORY_MAX_IMAGES training images, else off; emoji google -> twitter, mean of three seeds: twitter 59.7 ->
#: 71.5%, google val 80.5 -> 84.0%, the style proxy 74.7 -> 79.3%; docs/benchmarks-history.md, twelfth session). The
#: vote is a softmax over the stored images of cosine similarity / MEMORY_TEMPERATURE, summed per class.
MEMORY_TEMPERATURE = 0.02
#: above this many training images the default leaves the memory off (it would add over 51 MB to a
#: MobileNetV2 model: images x 1,280 features x 4 bytes); --memory W keeps it on whatever the size
MEMORY_MAX_IMAGES = 10_000
#: how the learning rate moves during a phase: plateau halves it when val_loss stalls; cosine warms up
#: over the first epoch (from lr/10) and then follows a cosine down to 0 at the phase's last epoch
LR_SCHEDULES = ("plateau", "cosine")

# The fixed choices of options (the CLI offers exactly these; the library checks them too)
SPLIT_MODES = ("copy", "symlink", "hardlink")   # how split/augment place the original files
BACKENDS = ("auto", "keras", "onnx")            # auto: the ONNX export when there is one
OUTPUT_FORMATS = ("table", "json", "jsonl", "csv")
CLASS_WEIGHTS = ("none", "auto")                # auto: inverse class frequency
QUANTIZE_MODES = ("int8",)                      # imgclf export --quantize
PRECISIONS = ("fp32", "int8")                   # imgclf predict --precision: model.onnx or model.int8.onnx
CALIBRATION_METHODS = ("temperature", "none")   # train --calibrate: temperature fitted on val (calibration.py)

# Defaults of the commands other than train (train's are TrainConfig's fields, below)
DEFAULT_SEED = 42
SPLIT_VAL = 0.1
SPLIT_TEST = 0.1
PREDICT_TOP_K = 3
PREDICT_BATCH_SIZE = 32
EXPORT_OPSET = 17
PREDICT_PRECISION = "fp32"
QUANTIZE_CALIBRATION_IMAGES = 300               # training images the int8 activation ranges are calibrated on
QUANTIZE_MAX_ACCURACY_DROP = 1.0                # points of held-out accuracy the int8 file may lose
DEFAULT_BACKEND = "auto"                        # predict/evaluate/compare --backend (one of BACKENDS)
SPLIT_MODE = "copy"                             # split/augment --mode (one of SPLIT_MODES)
AUGMENT_POLICY = "medium"                       # `imgclf augment --policy` (train's depends on the network)
DISTRIBUTE_MODE = "auto"                        # train --distribute (see imgclf/distribute.py)
OUTPUT_FORMAT = "table"                         # --format of the commands that print a table or JSON
REPORT_IMAGES = 200                             # evaluate --report-images: thumbnails inlined in report.html
PICTURE_IMAGES = 25                             # images in misclassified.png and disagreements.png
INFERENCE_BATCH_SIZE = 64                       # images per batch when evaluate/compare/calibration run a model
#: ... and at most this many pixels a batch (64 images of 224x224): larger inputs take smaller batches (448 px:
#: 16). evaluate of a 448 px mobilenet_v2 in batches of 64 was killed at 23.8 GB of memory (issue 34)
INFERENCE_BATCH_PIXELS = 64 * 224 * 224
GATE_MIN_ACCURACY_DELTA = 0.0                   # models tag --gate --min-accuracy-delta

# The files and folders imgclf writes (names users see in the registry and in --out folders)
METADATA_FILE = "metadata.json"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
TAGS_FILE = "tags.json"
RUN_FILE = "run.json"
CARD_FILE = "MODEL_CARD.md"
REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
COMPARE_FILE = "compare.json"
EVALUATION_DIR = "evaluation"                   # evaluate's default --out, inside the model's version folder
COMPARE_DIR = "compare"                         # compare's default --out, inside model B's version folder
EVALUATION_FILES = (METRICS_FILE, "confusion_matrix.csv", "confusion_matrix.png", "misclassified.csv",
                    "misclassified.png", "reliability.png", "risk_coverage.png")
COMPARE_FILES = (COMPARE_FILE, "disagreements.csv", "disagreements.png")


def _check_fraction(name: str, value: float, low: float = 0.0, high: float = 1.0) -> None:
    if not (low <= value <= high):
        raise UsageError(f"--{name} must be between {low} and {high}, got {value}")


@dataclass
class AugmentConfig:
    """Random image operations for the training split (online) or `imgclf augment` (offline)."""

    flip: str = "none"
    rotate: float = 0.0
    shift: float = 0.0
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    hue: float = 0.0          # rotate the hue by up to ± this fraction of the colour wheel (0.5 = half a turn)
    saturation: float = 0.0   # scale the saturation by a factor in [1 - s, 1 + s]
    grayscale: float = 0.0    # probability that an image is turned gray (kept 3 channels)
    shift_px: int = 0         # move by up to this many whole pixels in x and y, zero-filled (no resampling)
    randconv: float = 0.0     # probability that an image is restyled by a random convolution (augment.py)
    crop: float = 0.0         # random resized crop: keep U(crop, 1) of the area, aspect 3/4..4/3, resized back

    @classmethod
    def from_options(cls, policy: str = "none", option: str = "--augment", **overrides) -> "AugmentConfig":
        """A policy's operations, with the ones given in `overrides` (not None) replacing them. `option` is
        the name the user typed the policy with, for the message."""
        if policy not in AUGMENT_POLICIES:
            raise UsageError(f"{option} must be one of {', '.join(AUGMENT_POLICIES)}, got {policy!r}")
        values = dict(AUGMENT_POLICIES[policy])
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.flip not in FLIP_MODES:
            raise UsageError(f"--flip must be one of {', '.join(FLIP_MODES)}, got {self.flip!r}")
        _check_fraction("rotate", self.rotate, 0.0, 180.0)
        for name in ("shift", "zoom", "brightness", "contrast"):
            _check_fraction(name, getattr(self, name), 0.0, 0.9)
        _check_fraction("hue", self.hue, 0.0, 0.5)
        _check_fraction("saturation", self.saturation, 0.0, 1.0)
        _check_fraction("grayscale", self.grayscale, 0.0, 1.0)
        _check_fraction("randconv", self.randconv, 0.0, 1.0)
        if self.crop != 0.0 and not MIN_CROP_AREA <= self.crop <= 1.0:
            raise UsageError(f"--crop must be 0 (off) or between {MIN_CROP_AREA} and 1.0, got {self.crop}")
        if self.shift_px != int(self.shift_px) or not 0 <= self.shift_px <= MAX_SHIFT_PX:
            raise UsageError(f"--shift-px must be a whole number from 0 to {MAX_SHIFT_PX}, got {self.shift_px}")
        self.shift_px = int(self.shift_px)

    @property
    def active(self) -> bool:
        return self.flip != "none" or any(
            getattr(self, n) > 0 for n in ("rotate", "shift", "zoom", "brightness", "contrast", "shift_px", "randconv", "crop") + COLOR_OPS)


@dataclass
class TrainConfig:
    """Everything `imgclf train` needs; recorded in the model's metadata.json."""

    arch: str = AUTO_ARCH                 # auto: mobilenet_v2 or cnn, from the data (arch_choice says why)
    epochs: Optional[int] = None          # None: SCRATCH_DEFAULTS / PRETRAINED_DEFAULTS (see resolve)
    batch_size: Optional[int] = None      # None: 64, or SCRATCH_LONG_RUN's in a long run from scratch
    image_size: Optional[int] = None      # None: PRETRAINED_DEFAULTS' when pretrained, else the arch's, else the data's
    channels: Optional[int] = None        # None: 1 when every image is grayscale, else 3
    lr: Optional[float] = None
    lr_schedule: Optional[str] = None     # plateau | cosine (LR_SCHEDULES); None: by how the network starts
    label_smoothing: Optional[float] = None  # 0..0.5 of each label spread over the other classes
    seed: int = DEFAULT_SEED
    val_split: float = 0.1                # held out of train/ when the data has no val/
    patience: int = 4                     # early stopping on val_loss; 0 disables it
    name: Optional[str] = None            # registry name; default: the data folder's name
    weights: Optional[str] = None         # transfer learning: imagenet | none | PATH
    alpha: float = 1.0                    # MobileNet width multiplier
    fine_tune_layers: Optional[float] = None  # phase 2: layers (N>=1) or fraction (<1) of the backbone unfrozen
    fine_tune_epochs: Optional[int] = None  # phase 2 epochs (0 = none)
    class_weight: str = "none"            # auto (inverse frequency) | none
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_policy: Optional[str] = None  # None: the default policy for how the network starts
    augment_overrides: dict = field(default_factory=dict)  # --flip/--rotate/...: applied over the policy
    arch_choice: Optional[dict] = None    # what --arch auto chose and why (set by arch_choice.choose)
    mixed_precision: bool = False
    cache_dir: Optional[str] = None       # on-disk pixel cache folder (default: inside the registry)
    calibrate: str = "temperature"        # temperature (fitted on the val split) | none
    memory: Optional[float] = None        # weight of the nearest-neighbour vote, 0..1 (0 = off); None: default

    def optimizer_steps(self, n_train: int, replicas: int = 1) -> int:
        """Steps of a run of `epochs` over `n_train` images, a step taking `batch_size` on each replica."""
        return _steps(n_train, self.batch_size, self.epochs, replicas)

    def validate(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.fine_tune_epochs is not None and self.fine_tune_epochs < 0:
            raise UsageError(f"--fine-tune-epochs must be 0 or more, got {self.fine_tune_epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.image_size is not None and not (8 <= self.image_size <= 1024):
            raise UsageError(f"--image-size must be between 8 and 1024, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"--channels must be 1 or 3, got {self.channels}")
        if self.lr is not None and not (0 < self.lr < 1):
            raise UsageError(f"--lr must be between 0 and 1, got {self.lr}")
        _check_fraction("val-split", self.val_split, 0.0, 0.5)
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.label_smoothing is not None:
            _check_fraction("label-smoothing", self.label_smoothing, 0.0, 0.5)
        if self.class_weight not in CLASS_WEIGHTS:
            raise UsageError(f"--class-weight must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weight!r}")
        if self.calibrate not in CALIBRATION_METHODS:
            raise UsageError(f"--calibrate must be one of {', '.join(CALIBRATION_METHODS)}, got {self.calibrate!r}")
        if self.memory is not None:
            _check_fraction("memory", self.memory, 0.0, 1.0)
        if self.fine_tune_layers is not None and self.fine_tune_layers <= 0:
            raise UsageError(f"--fine-tune-layers must be positive, got {self.fine_tune_layers}")
        self.augment.validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The inverse of to_dict (a resumed run's config)."""
        d = dict(d)
        augment = AugmentConfig(**d.pop("augment"))
        return cls(**d, augment=augment)


def _steps(n_train: int, batch_size: int, epochs: int, replicas: int = 1) -> int:
    return -(-n_train // (batch_size * max(1, replicas))) * epochs


def resolve(cfg: TrainConfig, pretrained: bool, n_train: Optional[int] = None,
            replicas: Optional[int] = None) -> TrainConfig:
    """A new TrainConfig with the options left unset (None) filled with the defaults for a network
    trained from scratch or from pretrained weights; options the user gave are kept, and `cfg` is not
    changed. From scratch on `n_train` training images, the default epochs shrink so that training sees
    about SCRATCH_IMAGE_BUDGET images, and a run of fewer than COSINE_MIN_STEPS steps gets no augmentation
    instead of the `pixel` policy, while a run that is that long even at SCRATCH_LONG_RUN's batch size gets
    that batch size (and its learning rate, unless --lr is given); from pretrained weights on fewer than
    PRETRAINED_SMALL_SET images, its smaller batch. The learning-rate schedule is filled
    once `replicas` is known (None: left unset): a step takes `batch_size` images on each replica, and a
    run from scratch of fewer than COSINE_MIN_STEPS steps keeps the plateau schedule. Resolving a
    resolved config changes nothing."""
    defaults = PRETRAINED_DEFAULTS if pretrained else SCRATCH_DEFAULTS
    short = lambda batch, epochs, reps=1: (not pretrained and bool(n_train)  # noqa: E731
                                           and _steps(n_train, batch, epochs, reps) < COSINE_MIN_STEPS)
    epochs, lr = cfg.epochs, cfg.lr
    if epochs is None and not pretrained and n_train:
        epochs = max(1, min(defaults["epochs"], -(-SCRATCH_IMAGE_BUDGET // n_train)))
    batch_size = cfg.batch_size
    if batch_size is None and pretrained and n_train and n_train < PRETRAINED_SMALL_SET["images"]:
        batch_size = PRETRAINED_SMALL_SET["batch_size"]
    if batch_size is None:
        long_run = not pretrained and n_train and not short(SCRATCH_LONG_RUN["batch_size"], epochs)
        batch_size = SCRATCH_LONG_RUN["batch_size"] if long_run else defaults["batch_size"]
        if long_run and lr is None:
            lr = SCRATCH_LONG_RUN["lr"]
    filled = dict(epochs=epochs, lr=lr, fine_tune_epochs=cfg.fine_tune_epochs, fine_tune_layers=cfg.fine_tune_layers,
                  image_size=cfg.image_size, label_smoothing=cfg.label_smoothing)
    filled = {k: defaults.get(k) if v is None else v for k, v in filled.items()}
    memory = cfg.memory
    if memory is None:
        memory = defaults["memory"] if not n_train or n_train <= MEMORY_MAX_IMAGES else 0.0
    policy, augment = cfg.augment_policy, cfg.augment
    if policy is None:
        # a short run from scratch is not long enough to overfit: shifts only slowed it down (on the
        # quickstart and on 3 epochs of 6,000 Fashion-MNIST images, docs/benchmarks-history.md)
        policy = "none" if short(batch_size, filled["epochs"]) else defaults["augment_policy"]
        augment = AugmentConfig.from_options(policy, **cfg.augment_overrides)
    schedule = cfg.lr_schedule
    if schedule is None and replicas is not None:
        schedule = "plateau" if short(batch_size, filled["epochs"], replicas) else defaults["lr_schedule"]
    out = replace(cfg, batch_size=batch_size, memory=memory, augment_policy=policy, augment=replace(augment),
                  augment_overrides=dict(cfg.augment_overrides),
                  lr_schedule=schedule, **filled)
    out.validate()
    return out


# ------------------------------------------------------------------------------------------- synth
# `imgclf synth` (imgclf/synth.py): a small class-conditional GAN for scarce classes.
#: a class needs at least this many training images: below it the GAN only learns to copy them
SYNTH_MIN_IMAGES = 10
#: default --epochs: as many as make about this many generator steps (at least one epoch)
SYNTH_STEPS = 3000
#: images per training step (real and generated each)
SYNTH_BATCH_SIZE = 64
#: length of the generator's random input vector
SYNTH_LATENT_DIM = 64
#: default --image-size: the data's size, at most this (the GAN's cost grows with the square of it)
SYNTH_MAX_DEFAULT_SIZE = 64
#: channels of the generator's last and the discriminator's first convolution (doubled at each size step);
#: 16 keeps a step at ~0.1 CPU-s on 2 cores for 28 px (32: ~0.5 CPU-s)
SYNTH_WIDTH = 16
#: Adam settings of SNGAN (Miyato et al. 2018) with the hinge loss; the same for both networks
SYNTH_LR = 2e-4
SYNTH_BETAS = (0.0, 0.9)
#: decay of the moving average of the generator's weights; the average is what is saved and sampled
SYNTH_EMA_DECAY = 0.999
#: classes are drawn for training in proportion to count ** this (1: as in the data; 0: equally often)
SYNTH_CLASS_POWER = 0.5
#: images per class in the sample grid
SYNTH_GRID_COLUMNS = 8
#: the PNG text-chunk key that marks a synthetic image (scan and split recognise it, and the file name)
SYNTH_MARKER = "imgclf-synthetic"
SYNTH_NAME_PREFIX = "synth_"

# --- int8 export of the pretrained networks (issue 34) ---
#: what `imgclf export --quantize int8` keeps float in a pretrained MobileNet (imgclf.quantize.Recipe):
#: the softmax, the nearest-neighbour memory, the pooled features and the head after them; chosen on the val
#: splits of two mobilenet_v2 models at 160 px (emoji with the memory, Fashion-MNIST in colour);
#: docs/benchmarks.md, "int8 for the pretrained default (issue 34)"
QUANTIZE_PRETRAINED_KEEP_FLOAT = ("softmax", "memory", "features")
#: ... and, in mobilenet_v2, these layers: the input scaling (x / 127.5 - 1: uint8 cannot hold its 256
#: half-step values, and that alone changed the output as much as two int8 blocks do) and the stem (Conv1 and
#: expanded_conv: int8 alone, the worst part by 5x; in float it costs no speed). Keeping more of the network
#: float bought at most 1 point of agreement for a third of the batch-1 speed-up (docs/benchmarks.md)
QUANTIZE_MOBILENET_V2_FLOAT_LAYERS = ("scale", "Conv1", "bn_Conv1", "expanded_conv")
#: ... and its int8 convolutions' biases absorb the mean error of their int8 weights (quantize.Recipe): the
#: weights lose most of the labels (int8 weights with 16-bit activations agree as little as all int8)
QUANTIZE_MOBILENET_V2_BIAS_CORRECTION = True
#: ... and, before calibration, its residual streams' channels equalized at this strength (imgclf/equalize.py:
#: the float network unchanged, each small channel scaled up to the stream's range, the readers scaled down),
#: since onnxruntime gives an activation one scale for all its channels: val+ agreement 89.98 -> 94.40%
#: (emoji) and 92.50 -> 97.31% (Fashion-MNIST colour) at the same speed (docs/benchmarks.md)
QUANTIZE_MOBILENET_V2_EQUALIZE = 1.0
#: ... and its int8 file is the int8 network alone: a float fallback for the close calls (imgclf/fallback.py,
#: `imgclf export --float-fallback MARGIN`) is opt-in. On the rebuilt emoji model a margin of 0.2 lifted val+
#: agreement from 89.98% to 98.43% but answered 24.9% of the images in float: slower than fp32 at batch 1
#: (0.93x) in a file larger than fp32's (docs/benchmarks.md, "int8 for the pretrained default")
QUANTIZE_MOBILENET_V2_FLOAT_FALLBACK = 0.0
#: how their activation ranges are calibrated (MinMax | Entropy | Percentile)
QUANTIZE_PRETRAINED_CALIBRATION = "MinMax"

# Distributed training (imgclf/distribute.py, docs/distributed.md; issue 33)
#: how the default learning rate follows a global batch that grows with the replicas (an explicit
#: --batch-size is per replica): "sqrt" (Adam), "linear" (Goyal et al. for SGD) or "none"
DISTRIBUTED_LR_SCALING = "sqrt"
#: on several replicas BatchNormalization uses the global batch's statistics (Keras' synchronized=True), as
#: one process would: 1,000 Fashion-MNIST images, 3 epochs, two workers within a point of one process
#: instead of 5 points under (per-replica statistics, half the batch each; docs/distributed.md)
DISTRIBUTED_SYNC_BATCHNORM = True
#: optimizer steps Keras runs per call of its compiled train function under a strategy (model.compile's
#: steps_per_execution: fewer Python round trips, log pulls and callback calls per epoch). 1: with Keras 3.15
#: and TF 2.21 any value over 1 fails under MultiWorkerMirroredStrategy ("You must feed a value for
#: placeholder tensor ... [Op:__inference_multi_step_on_iterator]", measured for issue 33). Over 1 would also
#: need an epoch's steps to be a multiple of it: the train set repeats (train.py), so a last call that took
#: more batches than the epoch has left would take the next epoch's first ones
DISTRIBUTED_STEPS_PER_EXECUTION = 1
