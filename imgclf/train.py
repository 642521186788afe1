"""`imgclf train`: data folder -> decoded pixels -> Keras model -> a new registry version.

The steps, each in its own home:
  load_splits (data/split.py) -> choose_spec -> arch.build (architectures/) -> decode (data/pipeline.py)
  -> start_run (runs.py: the staging folder, resumable) -> fit_phase for each Phase -> final_metrics
  -> build_metadata -> Run.commit (registry.py: an atomic rename into ROOT/NAME/VERSION).

Each epoch is checkpointed in the staging folder (BackupAndRestore) and appended to history.csv, so
Ctrl-C or a crash loses at most one epoch and `imgclf train --resume RUN` continues it.
"""
from __future__ import annotations

import os
import warnings
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from imgclf import arch_choice, distribute, memory, registry
from imgclf.architectures import Architecture, get_architecture
from imgclf.config import AUTO_ARCH, DISTRIBUTE_MODE, MEMORY_MAX_IMAGES, MEMORY_TEMPERATURE, TrainConfig, resolve
from imgclf.console import Reporter
from imgclf.data.files import fingerprint
from imgclf.data.pipeline import Decoded, decode, make_dataset
from imgclf.data.scan import Dataset
from imgclf.data.split import Splits, load_splits
from imgclf.errors import DataError, UsageError
from imgclf.preprocessing import PreprocessingSpec, is_grayscale_mode
from imgclf.runs import Run, load_run, start_run
from imgclf.tf_quiet import keras_class

N_SAMPLE_PATHS = 32
#: early stopping waits this many epochs: BatchNorm statistics need a few epochs on small datasets
WARMUP_EPOCHS = 5


@dataclass
class Phase:
    name: str       # "train" (from scratch), "head" (pretrained backbone frozen), "fine-tune"
    epochs: int
    lr: float


def choose_spec(cfg: TrainConfig, arch: Architecture, train: Dataset) -> PreprocessingSpec:
    channels = cfg.channels or (1 if all(is_grayscale_mode(s.mode) for s in train.samples) else 3)
    size = cfg.image_size or arch.default_size
    if size is None:
        # our own models: the typical image size of the data, between 16 and 128 px
        size = int(statistics.median(min(s.width, s.height) for s in train.samples))
        size = max(16, min(128, size))
    if arch.allowed_sizes and size not in arch.allowed_sizes:
        raise UsageError(f"--image-size {size} is not allowed for {arch.name}; use one of "
                         f"{', '.join(map(str, arch.allowed_sizes))}")
    return PreprocessingSpec(image_size=(size, size), channels=channels)


def plan_phases(arch: Architecture, cfg: TrainConfig, reporter: Reporter) -> List[Phase]:
    """From scratch: one phase for the whole network. Pretrained: the head, then (--fine-tune-epochs)
    the top of the backbone at a tenth of the learning rate."""
    if not arch.starts_pretrained(cfg.weights):
        if cfg.fine_tune_epochs > 0:
            reporter.warn("--fine-tune-epochs ignored: with random weights the whole network trains from the start")
        return [Phase("train", cfg.epochs, cfg.lr)]
    phases = [Phase("head", cfg.epochs, cfg.lr)]
    if cfg.fine_tune_epochs > 0:
        phases.append(Phase("fine-tune", cfg.fine_tune_epochs, cfg.lr / 10))
    return phases


def class_weights(labels: np.ndarray, n_classes: int) -> Dict[int, float]:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    counts[counts == 0] = 1
    return {i: float(len(labels) / (n_classes * c)) for i, c in enumerate(counts)}


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("imgclf", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pillow", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def train(data, cfg: TrainConfig, registry_dir=None, reporter: Optional[Reporter] = None,
          resume: Optional[str] = None, distribute_mode: str = DISTRIBUTE_MODE,
          cluster_timeout: int = distribute.DEFAULT_CLUSTER_TIMEOUT) -> dict:
    """Train a model and commit it to the registry. Returns the new version's metadata.
    distribute_mode/cluster_timeout: see imgclf/distribute.py (every worker of a cluster calls this)."""
    before = sys.modules["keras"].mixed_precision.global_policy().name if "keras" in sys.modules else "float32"
    reporter = reporter or Reporter()
    dist = distribute.plan(distribute_mode, cluster_timeout, reporter)
    try:
        return _train(data, cfg, registry_dir, reporter, resume, dist)
    except Exception as exc:
        failure = dist.translate(exc)
        if failure is exc:
            raise
        raise failure from None
    finally:
        dist.close()  # a non-chief worker's own temporary folder
        # --mixed-precision sets Keras' global policy: it must not outlive the run (in-process callers)
        if "keras" in sys.modules and sys.modules["keras"].mixed_precision.global_policy().name != before:
            sys.modules["keras"].mixed_precision.set_global_policy(before)


def _train(data, cfg: TrainConfig, registry_dir, reporter: Reporter, resume: Optional[str],
           dist: distribute.Distribution) -> dict:
    root = dist.workspace(registry.root_of(registry_dir), resume)  # only the chief writes to the registry
    if resume:
        data, cfg, info = load_run(root, resume)
        reporter.info(f"resuming run {resume} ({info.get('epochs_done', 0)} epochs done)")
    given = {"batch_size": cfg.batch_size is not None, "lr": cfg.lr is not None}   # before the defaults
    cfg, splits, arch, spec = _prepare(data, cfg, resume, reporter)
    pretrained = arch.starts_pretrained(cfg.weights)

    from imgclf.tf_quiet import import_keras

    keras = import_keras()
    cfg = _start_distribution(dist, cfg, pretrained, len(splits.train.samples), given, reporter)
    dist.check_same_data(distribute.data_fingerprint(
        fingerprint([p for d in (splits.train, splits.val, splits.test) if d is not None for p in d.paths]),
        splits.class_names, [len(d.samples) if d is not None else -1 for d in (splits.train, splits.val, splits.test)],
        spec.to_dict()), data)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(cfg.seed)
    # build first: a bad --weights file fails before minutes of decoding
    with dist.scope():
        model = arch_choice.build_model(arch, spec.shape, len(splits.class_names), cfg)
    if cfg.memory and not memory.has_features(model):
        raise UsageError(f"--memory {cfg.memory:g}: {cfg.arch} at {spec.image_size[0]} px has no pooled features "
                         "to remember (the MobileNets have them, and the cnn from 64 px); use --memory 0")
    decoded = _decode_checked(data, splits, spec, cfg.cache_dir or str(root / ".cache"), reporter)
    run = start_run(root, cfg.name, data, cfg, resume, fingerprint([p for d in decoded.values() for p in d.paths]))
    model, metrics, calibration, weights = _fit_and_evaluate(model, arch, cfg, run, decoded, len(splits.class_names),
                                                             dist, registry_dir, reporter)
    return _commit(data, cfg, spec, splits, decoded, weights, metrics, calibration, model, run, dist)


def _prepare(data, cfg: TrainConfig, resume: Optional[str], reporter: Reporter):
    """Check the options, read and split the data, choose the architecture, fill the defaults and the
    preprocessing (nothing of TensorFlow runs yet). Returns (the resolved config, a new object; splits,
    architecture, spec)."""
    cfg.validate()
    if cfg.arch != AUTO_ARCH:  # a bad --arch/--weights pair fails before the data is read
        get_architecture(cfg.arch).check_weights(cfg.weights)
    cfg = replace(cfg, name=registry.check_name(cfg.name or registry.safe_name(Path(os.path.abspath(data)).name)))
    splits = load_splits(data, cfg.val_split, cfg.seed)
    for p in splits.problems:
        reporter.warn(f"skipped {p.path}: {p.reason}")
    cfg = arch_choice.choose(cfg, splits.train)
    choice = cfg.arch_choice
    arch = get_architecture(cfg.arch)
    arch.check_weights(cfg.weights)
    pretrained, n_train = arch.starts_pretrained(cfg.weights), len(splits.train.samples)
    memory_default = cfg.memory is None
    cfg = resolve(cfg, pretrained, n_train=n_train)
    if memory_default and pretrained and not cfg.memory and not resume:
        reporter.info(f"nearest-neighbour memory off: {n_train:,} training images, over {MEMORY_MAX_IMAGES:,} "
                      "(pass --memory 0.5 to keep it)")
    if not resume and arch_choice.describe(choice):
        reporter.info(arch_choice.describe(choice))
    spec = choose_spec(cfg, arch, splits.train)
    reporter.info(f"{len(splits.class_names)} classes ({', '.join(splits.class_names[:10])}"
                  f"{', ...' if len(splits.class_names) > 10 else ''}); images {spec.image_size[0]}x"
                  f"{spec.image_size[1]}x{spec.channels}; arch {cfg.arch}")
    return cfg, splits, arch, spec


def _start_distribution(dist: distribute.Distribution, cfg: TrainConfig, pretrained: bool, n_train: int,
                        given: dict, reporter: Reporter) -> TrainConfig:
    """Start the strategy (before any other TensorFlow op); returns the config with the batch size, the
    learning rate and the schedule fitted to its replicas (distribute.scale_for_replicas;
    docs/distributed.md)."""
    dist.start()
    cfg, note = distribute.scale_for_replicas(cfg, dist.replicas, given["batch_size"], given["lr"])
    # the short-run rule counts optimizer steps, and a step takes a batch on every replica
    cfg = resolve(cfg, pretrained, n_train=n_train, replicas=dist.replicas)
    if dist.strategy is not None:
        reporter.info(dist.summary(cfg.batch_size))
    if note:
        reporter.info(note)
    return cfg


def _decode_checked(data, splits: Splits, spec: PreprocessingSpec, cache_dir: str,
                    reporter: Reporter) -> Dict[str, Decoded]:
    decoded = decode_splits(splits, spec, cache_dir, reporter)
    if len(decoded["train"].labels) == 0:
        raise DataError(f"{data}: no decodable training images")
    if len(set(decoded["train"].labels.tolist())) < 2:
        raise DataError(f"{data}: the training images cover only one class")
    return decoded


def _fit_and_evaluate(model, arch: Architecture, cfg: TrainConfig, run: Run, decoded: Dict[str, Decoded],
                      num_classes: int, dist: distribute.Distribution, registry_dir, reporter: Reporter):
    """Every phase of training, the memory, the val/test metrics and the calibration, under the strategy;
    the model saved in the staging folder. Returns (model, metrics, calibration, class weights)."""
    from imgclf.data.augment import build_augmenter

    tr, va = decoded["train"], decoded.get("val")
    batch = dist.global_batch(cfg.batch_size)  # --batch-size is per replica
    weights = class_weights(tr.labels, num_classes) if cfg.class_weight == "auto" else None
    augment = build_augmenter(cfg.augment, cfg.seed)
    # under a strategy the class weights go into the dataset (Keras cannot add them to a distributed one)
    train_ds = dist.dataset(lambda shard: _weighted(make_dataset(
        tr.pixels, tr.labels, batch, shuffle=True, seed=cfg.seed, augment=augment, shard=shard, repeat=True),
        weights if dist.strategy is not None else None))
    # the train set repeats (one iterator for the whole fit, see make_dataset); the val set does not: Keras
    # drops its iterator at every evaluation, and one that is finished is dropped at no cost
    val_ds = (dist.dataset(lambda shard: make_dataset(va.pixels, va.labels, batch, shard=shard))
              if va is not None and len(va.labels) else None)
    phases = plan_phases(arch, cfg, reporter)
    with dist.fitting(model):
        try:
            with dist.synchronized_batchnorm(model):
                for phase in phases:
                    fit_phase(model, phase, phase is phases[-1], arch, cfg, run, train_ds, val_ds,
                              weights if dist.strategy is None else None, reporter,
                              steps_per_epoch=dist.steps(len(tr.labels), batch),
                              steps_per_execution=dist.steps_per_execution)
            if cfg.label_smoothing:  # val/test loss as plain cross-entropy, comparable between models
                model.compile(optimizer=model.optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        except BaseException as exc:
            run.abandon(dist.translate(exc, dist.resume_hint(run, registry_dir)), registry_dir)
        if cfg.memory:
            model = add_memory(model, tr, num_classes, cfg, reporter)
        metrics = final_metrics(model, run.history(), decoded, batch, dist.dataset)
        from imgclf.calibration import calibrate_keras_model
        calibration = calibrate_keras_model(model, va, cfg.calibrate, cfg.batch_size, reporter)
        model.save(run.staging / registry.KERAS_FILE)  # every worker saves (collective reads); only one commits
    return model, metrics, calibration, weights


def _weighted(ds, weights):
    """Each batch with its images' class weights as sample weights (what model.fit's class_weight does)."""
    if not weights:
        return ds
    from keras.src.trainers.data_adapters.tf_dataset_adapter import make_class_weight_map_fn

    return ds.map(make_class_weight_map_fn(weights))


def _commit(data, cfg: TrainConfig, spec: PreprocessingSpec, splits: Splits, decoded: Dict[str, Decoded],
            weights, metrics: dict, calibration, model, run: Run, dist: distribute.Distribution) -> dict:
    """The curves and metadata.json, then the atomic commit of the version (the chief's is the model)."""
    from imgclf.plots import curves_png
    curves_png(run.staging / registry.CURVES, run.history(), title=f"{cfg.name}: loss and accuracy per epoch")
    metadata = build_metadata(data, cfg, spec, splits, decoded, weights, metrics)
    metadata["calibration"] = calibration
    if cfg.memory:
        vote = model.get_layer(memory.MEMORY_LAYER)
        metadata["memory"] = memory.describe(cfg.memory, vote.temperature, vote.references, vote.width)
    metadata["distribute"] = dist.describe(cfg.batch_size)
    version, final = run.commit(cfg.name, metadata)
    metadata.update(version=version, path=str(final))
    if not dist.is_chief:  # its copy lives in its own temporary folder, removed now: the chief's is the model
        metadata.update(version=None, path=None)
    return metadata


def add_memory(model, train: Decoded, num_classes: int, cfg: TrainConfig, reporter: Reporter):
    """The trained model with the nearest-neighbour memory of the training images (imgclf/memory.py),
    compiled for evaluation and run under the same distribution strategy as the trained one."""
    with reporter.progress("remembering the training images", total=len(train.labels)) as advance:
        blended = memory.attach(model, train.pixels, train.labels, num_classes, cfg.memory, MEMORY_TEMPERATURE,
                                cfg.batch_size, progress=advance)
    blended._distribute_strategy = model._distribute_strategy
    blended.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    vote = blended.get_layer(memory.MEMORY_LAYER)
    reporter.info(f"nearest-neighbour memory: {vote.references:,} training images x {vote.width:,} features "
                  f"({vote.references * vote.width * 4 / 1e6:.1f} MB), blended at {cfg.memory:g}")
    return blended


def decode_splits(splits: Splits, spec: PreprocessingSpec, cache_dir: str, reporter: Reporter) -> Dict[str, Decoded]:
    """Each split's pixels (from the pixel cache when it has them); undecodable files are skipped and named."""
    decoded = {}
    for split_name in ("train", "val", "test"):
        ds = getattr(splits, split_name)
        if ds is None:
            continue
        with reporter.progress(f"decoding {split_name}", total=len(ds.samples)) as advance:
            d = decode(ds.paths, ds.labels, spec, cache_dir=cache_dir, progress=advance)
        for e in d.problems:
            reporter.warn(f"skipped {e.path}: {e.reason}")
        if d.from_cache:
            reporter.info(f"{split_name}: {len(d.labels)} images from the pixel cache")
        decoded[split_name] = d
    return decoded


def fit_phase(model, phase: Phase, last: bool, arch: Architecture, cfg: TrainConfig, run: Run, train_ds, val_ds,
              weights, reporter: Reporter, steps_per_epoch: int, steps_per_execution: int = 1) -> None:
    """One phase of model.fit, checkpointed every epoch; a phase finished before an interruption is
    restored from its saved best weights instead of being trained again."""
    import keras

    history = run.history()
    # epochs of earlier phases come first in history.csv (early stopping may have cut them short)
    epoch_offset = sum(1 for r in history if r["phase"] != phase.name)
    if phase.name == "fine-tune":
        k = arch.unfreeze(model, cfg.fine_tune_layers)
        reporter.info(f"fine-tuning the top {k} backbone layers at lr {phase.lr:g}")
    if run.phase_weights(phase.name).exists() and not last:
        model.load_weights(run.phase_weights(phase.name))
        return
    lr = cosine_schedule(keras, phase.lr, phase.epochs, steps_per_epoch) if cfg.lr_schedule == "cosine" else phase.lr
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=training_loss(keras, cfg.label_smoothing or 0.0),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    callbacks = [keras.callbacks.BackupAndRestore(str(run.checkpoint_dir(phase.name))),
                 _EpochLogger(run, phase, epoch_offset, reporter)]
    if cfg.patience > 0:
        monitor = "val_loss" if val_ds is not None else "loss"
        if cfg.lr_schedule != "cosine":
            # halve the step size when progress stalls, well before early stopping gives up
            callbacks.append(_warm_plateau()(monitor=monitor, factor=0.5, patience=max(1, cfg.patience // 2),
                                                  min_lr=phase.lr / 32, verbose=0))
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience,
                                                       restore_best_weights=True, start_from_epoch=WARMUP_EPOCHS))
    with warnings.catch_warnings():
        # several steps per execution: validation's last call finds fewer batches than it could take (the
        # train set repeats and never runs out)
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(train_ds, validation_data=val_ds, epochs=phase.epochs, callbacks=callbacks, class_weight=weights,
                  steps_per_epoch=steps_per_epoch, verbose=0)
    model.save_weights(run.phase_weights(phase.name))


def cosine_schedule(keras, lr: float, epochs: int, steps_per_epoch: int):
    """--lr-schedule cosine: a linear warm-up from lr/10 over the first epoch (none for a 1-epoch phase),
    then a cosine from lr down to 0 at the phase's last step (counted by the optimizer's own step counter,
    so a resumed phase continues where it was)."""
    total = max(1, epochs * steps_per_epoch)
    warm = steps_per_epoch if epochs > 1 else 0
    if not warm:
        return keras.optimizers.schedules.CosineDecay(lr, total)
    return keras.optimizers.schedules.CosineDecay(lr / 10, total - warm, warmup_target=lr, warmup_steps=warm)


def training_loss(keras, smoothing: float):
    """Cross-entropy on integer labels; with --label-smoothing S each target is (1 - S) on its class and
    S spread evenly over all classes (Keras' categorical label smoothing)."""
    if not smoothing:
        return "sparse_categorical_crossentropy"
    return _smoothed_loss_class()(smoothing)


@keras_class
def _smoothed_loss_class(keras):
    @keras.saving.register_keras_serializable(package="imgclf")
    class SmoothedSparseCrossentropy(keras.losses.Loss):
        def __init__(self, smoothing=0.1, name="smoothed_sparse_crossentropy", **kwargs):
            super().__init__(name=name, **kwargs)
            self.smoothing = float(smoothing)

        def call(self, y_true, y_pred):
            ops = keras.ops
            labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
            one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
            return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.smoothing)

        def get_config(self):
            return {**super().get_config(), "smoothing": self.smoothing}

    return SmoothedSparseCrossentropy


def final_metrics(model, history: List[dict], decoded: Dict[str, Decoded], batch_size: int,
                  distribute=lambda build: build(None)) -> dict:
    metrics = {}
    if history:
        last = history[-1]
        # as logged during the last epoch (dropout on); val/test below are the restored best weights
        metrics["last_epoch_train_loss"] = float(last["loss"])
        metrics["last_epoch_train_accuracy"] = float(last["accuracy"])
    metrics["epochs_run"] = len(history)
    for split_name in ("val", "test"):
        d = decoded.get(split_name)
        if d is not None and len(d.labels):
            ds = distribute(lambda shard: make_dataset(d.pixels, d.labels, batch_size, shard=shard))
            loss, acc = model.evaluate(ds, verbose=0)
            metrics[f"{split_name}_loss"], metrics[f"{split_name}_accuracy"] = float(loss), float(acc)
    return metrics


def build_metadata(data, cfg: TrainConfig, spec: PreprocessingSpec, splits: Splits, decoded: Dict[str, Decoded],
                   weights: Optional[Dict[int, float]], metrics: dict) -> dict:
    tr, va, te = decoded["train"], decoded.get("val"), decoded.get("test")
    sample_source = te if te is not None else va if va is not None else tr
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(sample_source.paths), size=min(N_SAMPLE_PATHS, len(sample_source.paths)), replace=False)
    return {
        "name": cfg.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),  # orders `latest`
        "arch": cfg.arch,
        "arch_choice": cfg.arch_choice,
        "class_names": splits.class_names,
        "preprocessing": spec.to_dict(),
        "image_size": list(spec.image_size),
        "channels": spec.channels,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "class_weight": {splits.class_names[i]: w for i, w in weights.items()} if weights else None,
        "dataset": {
            "source": os.path.abspath(data),
            "fingerprint": fingerprint([p for d in decoded.values() for p in d.paths]),
            "val_held_out": splits.held_out,
            "skipped": len(splits.problems) + sum(len(d.problems) for d in decoded.values()),
            "train": _summary(splits.train, tr), "val": _summary(splits.val, va), "test": _summary(splits.test, te),
        },
        "metrics": metrics,
        "sample_paths": [os.path.abspath(sample_source.paths[i]) for i in sorted(picks)],
        "library_versions": library_versions(),
    }


def _summary(ds: Optional[Dataset], decoded: Optional[Decoded]) -> Optional[dict]:
    if ds is None or decoded is None:
        return None
    counts = np.bincount(decoded.labels, minlength=len(ds.class_names))
    return {"root": os.path.abspath(ds.root), "images": int(len(decoded.labels)),
            "per_class": {c: int(n) for c, n in zip(ds.class_names, counts)}}


@keras_class
def _make_epoch_logger(keras):
    class EpochLogger(keras.callbacks.Callback):
        """Per-epoch progress on stderr and history.csv/run.json in the staging folder."""

        def __init__(self, run: Run, phase: Phase, offset: int, reporter: Reporter):
            super().__init__()
            self.run, self.offset, self.reporter = run, offset, reporter
            self.phase, self.epochs = phase.name, phase.epochs
            self.bar = None

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = self.t_train_end = time.perf_counter()
            self.t_val = 0.0
            steps = self.params.get("steps")
            self.bar = self.reporter.epoch_bar(f"{self.phase} epoch {epoch + 1}/{self.epochs}", steps)
            self.bar.__enter__()

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                logs = logs or {}
                self.bar.update(batch + 1, f"loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f}")
            self.t_train_end = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.t_val_begin = time.perf_counter()

        def on_test_end(self, logs=None):
            self.t_val = time.perf_counter() - self.t_val_begin

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None
            seconds = time.perf_counter() - self.t0
            lr = self.model.optimizer.learning_rate
            row = {"epoch": self.offset + epoch + 1, "phase": self.phase, "lr": f"{float(np.asarray(lr)):.6g}",
                   "seconds": f"{seconds:.2f}", "train_seconds": f"{self.t_train_end - self.t0:.2f}",
                   "val_seconds": f"{self.t_val:.2f}"}
            for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if k in logs:
                    row[k] = f"{float(logs[k]):.6f}"
            self.run.append_history(row)
            val = (f", val_loss {logs['val_loss']:.4f}, val_acc {logs['val_accuracy']:.4f}"
                   if "val_loss" in logs else "")
            self.reporter.info(f"{self.phase} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', 0):.4f}, "
                               f"acc {logs.get('accuracy', 0):.4f}{val} ({seconds:.1f}s)")

    return EpochLogger


@keras_class
def _warm_plateau(keras):
    class WarmReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
        """ReduceLROnPlateau that, like our early stopping, ignores the BatchNorm warm-up epochs."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch >= WARMUP_EPOCHS:
                super().on_epoch_end(epoch, logs)

    return WarmReduceLROnPlateau


def _EpochLogger(*args):
    return _make_epoch_logger()(*args)
