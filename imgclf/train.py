"""`imgclf train`: data folder -> decoded pixels -> Keras model -> a new registry version.

The run lives in ROOT/.staging/RUN until it is complete: each epoch is checkpointed there
(BackupAndRestore) and appended to history.csv, so Ctrl-C or a crash loses at most one epoch and
`imgclf train --resume RUN` continues it. Only a finished run is renamed into ROOT/NAME/VERSION.
"""
from __future__ import annotations

import csv
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from imgclf import registry
from imgclf.architectures import get_architecture
from imgclf.config import AugmentConfig, TrainConfig
from imgclf.console import Reporter
from imgclf.data.pipeline import Decoded, decode, make_dataset
from imgclf.data.scan import Dataset, find_split_dirs, require_trainable, scan
from imgclf.data.split import assign
from imgclf.errors import DataError, ImgclfError, UsageError
from imgclf.preprocessing import PreprocessingSpec, is_grayscale_mode

HISTORY_FIELDS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
N_SAMPLE_PATHS = 32
#: early stopping waits this many epochs: BatchNorm statistics need a few epochs on small datasets
WARMUP_EPOCHS = 5


class Interrupted(ImgclfError):
    exit_code = 130


@dataclass
class Splits:
    """Paths and labels of each split, with the class names in index order."""

    class_names: List[str]
    train: Dataset
    val: Optional[Dataset]
    test: Optional[Dataset]
    held_out: bool = False       # val was held out of train in memory
    problems: list = field(default_factory=list)


def load_splits(data, val_split: float, seed: int) -> Splits:
    """A split root (train/ + val/ and/or test/) or a plain class-folder tree (val held out, seeded)."""
    root = Path(data)
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    dirs = find_split_dirs(root) if root.is_dir() else None
    if dirs:
        train = scan(dirs["train"])
        require_trainable(train)
        val = scan(dirs["val"], class_names=train.class_names) if "val" in dirs else None
        test = scan(dirs["test"], class_names=train.class_names) if "test" in dirs else None
        problems = train.problems + (val.problems if val else []) + (test.problems if test else [])
        if val is None and val_split > 0:
            train, val = _hold_out(train, val_split, seed)
            return Splits(train.class_names, train, val, test, True, problems)
        return Splits(train.class_names, train, val, test, False, problems)
    ds = scan(root)
    require_trainable(ds)
    if val_split <= 0:
        return Splits(ds.class_names, ds, None, None, False, ds.problems)
    train, val = _hold_out(ds, val_split, seed)
    return Splits(ds.class_names, train, val, None, True, ds.problems)


def _hold_out(ds: Dataset, val_split: float, seed: int):
    where = assign(ds, val_split, 0.0, seed)
    tr = [s for s in ds.samples if where[s.path] == "train"]
    va = [s for s in ds.samples if where[s.path] == "val"]
    return (Dataset(ds.root, ds.class_names, tr, ds.problems, ds.empty_classes),
            Dataset(ds.root, ds.class_names, va, [], []) if va else None)


def choose_spec(cfg: TrainConfig, arch, train: Dataset) -> PreprocessingSpec:
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


def _history_rows(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _append_history(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})
        f.flush()
        os.fsync(f.fileno())


def _fingerprint(paths: List[str]) -> str:
    import hashlib
    h = hashlib.blake2b(digest_size=12)
    for p in sorted(paths):
        try:
            st = os.stat(p)
            h.update(f"{os.path.basename(p)}\0{st.st_size}\n".encode())
        except OSError:
            pass
    return h.hexdigest()


def _summary(ds: Optional[Dataset], decoded: Optional[Decoded]) -> Optional[dict]:
    if ds is None or decoded is None:
        return None
    counts = np.bincount(decoded.labels, minlength=len(ds.class_names))
    return {"root": os.path.abspath(ds.root), "images": int(len(decoded.labels)),
            "per_class": {c: int(n) for c, n in zip(ds.class_names, counts)}}


def train(data, cfg: TrainConfig, registry_dir=None, reporter: Optional[Reporter] = None,
          resume: Optional[str] = None) -> dict:
    """Train a model and commit it to the registry. Returns the new version's metadata."""
    before = sys.modules["keras"].mixed_precision.global_policy().name if "keras" in sys.modules else "float32"
    try:
        return _train(data, cfg, registry_dir, reporter, resume)
    finally:
        # --mixed-precision sets Keras' global policy: it must not outlive the run (in-process callers)
        if "keras" in sys.modules and sys.modules["keras"].mixed_precision.global_policy().name != before:
            sys.modules["keras"].mixed_precision.set_global_policy(before)


def _train(data, cfg: TrainConfig, registry_dir, reporter: Optional[Reporter], resume: Optional[str]) -> dict:
    reporter = reporter or Reporter()
    root = registry.root_of(registry_dir)
    if resume:
        staging = root / registry.STAGING / resume
        if not (staging / "run.json").is_file():
            runs = sorted(p.name for p in (root / registry.STAGING).glob("*") if (p / "run.json").is_file()) \
                if (root / registry.STAGING).is_dir() else []
            raise UsageError(f"no unfinished run {resume!r} in {root}" +
                             (f"; unfinished runs: {', '.join(runs)}" if runs else ""))
        run = registry.read_json(staging / "run.json")
        if run.get("pid") not in (None, os.getpid()) and registry._pid_alive(run.get("pid")):
            raise UsageError(f"run {resume} is still in progress (process {run['pid']}); resume it once that "
                             "process has ended")
        data = run["data"]
        aug = AugmentConfig(**run["config"].pop("augment"))
        cfg = TrainConfig(**run["config"], augment=aug)
        reporter.info(f"resuming run {resume} ({run.get('epochs_done', 0)} epochs done)")
    cfg.validate()
    arch = get_architecture(cfg.arch)
    if cfg.weights and not arch.pretrained and cfg.weights != "none":
        raise UsageError(f"--weights applies to the pretrained architectures only, not {cfg.arch}")
    name = registry.check_name(cfg.name or registry.safe_name(Path(os.path.abspath(data)).name))
    cfg.name = name

    splits = load_splits(data, cfg.val_split, cfg.seed)
    for p in splits.problems:
        reporter.warn(f"skipped {p.path}: {p.reason}")
    spec = choose_spec(cfg, arch, splits.train)
    reporter.info(f"{len(splits.class_names)} classes ({', '.join(splits.class_names[:10])}"
                  f"{', ...' if len(splits.class_names) > 10 else ''}); images {spec.image_size[0]}x"
                  f"{spec.image_size[1]}x{spec.channels}; arch {cfg.arch}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    import keras

    warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed")
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(cfg.seed)
    # build first: a bad --weights file fails before minutes of decoding
    model = arch.build(spec.shape, len(splits.class_names), cfg)

    cache_dir = cfg.cache_dir or str(root / ".cache")
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
    if len(decoded["train"].labels) == 0:
        raise DataError(f"{data}: no decodable training images")
    if len(set(decoded["train"].labels.tolist())) < 2:
        raise DataError(f"{data}: the training images cover only one class")

    fingerprint = _fingerprint([p for d in decoded.values() for p in d.paths])
    if resume and run.get("fingerprint", fingerprint) != fingerprint:
        raise DataError(f"{data}: the images changed since run {resume} started (files added, removed or "
                        "resized); resuming would train one model on two datasets: start a new run")
    if not resume:
        staging = registry.new_staging(root, name)
    run_info = {"data": os.path.abspath(data), "config": cfg.to_dict(), "pid": os.getpid(), "fingerprint": fingerprint,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "epochs_done": 0}
    if resume:
        run_info.update({k: v for k, v in registry.read_json(staging / "run.json").items()
                         if k in ("started", "epochs_done")})
    registry.write_json_atomic(staging / "run.json", run_info)

    from imgclf.data.augment import build_augmenter

    augmenter = build_augmenter(cfg.augment, cfg.seed)
    tr, va, te = decoded["train"], decoded.get("val"), decoded.get("test")
    train_ds = make_dataset(tr.pixels, tr.labels, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augmenter)
    val_ds = make_dataset(va.pixels, va.labels, cfg.batch_size) if va is not None and len(va.labels) else None
    weights = class_weights(tr.labels, len(splits.class_names)) if cfg.class_weight == "auto" else None

    history_path = staging / registry.HISTORY
    if not resume and history_path.exists():
        history_path.unlink()
    from_scratch = not arch.pretrained or cfg.weights == "none"
    phases = [("train" if from_scratch else "head", cfg.epochs, cfg.lr)]
    if from_scratch and cfg.fine_tune_epochs > 0:
        reporter.warn("--fine-tune-epochs ignored: with random weights the whole network trains from the start")
    if not from_scratch and cfg.fine_tune_epochs > 0:
        phases.append(("fine-tune", cfg.fine_tune_epochs, cfg.lr / 10))

    try:
        for phase, epochs, lr in phases:
            # epochs of earlier phases come first in history.csv (early stopping may have cut them short)
            epoch_offset = sum(1 for r in _history_rows(history_path) if r["phase"] != phase)
            if phase == "fine-tune":
                from imgclf.architectures.mobilenet import unfreeze_top
                k = unfreeze_top(model, cfg.fine_tune_layers)
                reporter.info(f"fine-tuning the top {k} backbone layers at lr {lr:g}")
            if (staging / f"after-{phase}.weights.h5").exists() and phase != phases[-1][0]:
                # phase finished before an interruption: its best weights were saved after it
                model.load_weights(staging / f"after-{phase}.weights.h5")
                continue
            model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            callbacks = [
                keras.callbacks.BackupAndRestore(str(staging / f"backup-{phase}")),
                _EpochLogger(history_path, phase, epoch_offset, staging, reporter, epochs),
            ]
            if cfg.patience > 0:
                monitor = "val_loss" if val_ds is not None else "loss"
                # halve the step size when progress stalls, well before early stopping gives up
                callbacks.append(_warm_plateau(keras)(
                    monitor=monitor, factor=0.5, patience=max(1, cfg.patience // 2), min_lr=lr / 32, verbose=0))
                callbacks.append(keras.callbacks.EarlyStopping(
                    monitor=monitor, patience=cfg.patience,
                    restore_best_weights=True, start_from_epoch=WARMUP_EPOCHS))
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                      class_weight=weights, verbose=0)
            model.save_weights(staging / f"after-{phase}.weights.h5")
    except BaseException as exc:
        rows = _history_rows(history_path)
        if not rows and not resume:  # nothing worth keeping: leave no debris
            shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, KeyboardInterrupt):
            raise
        if not rows:
            raise Interrupted("interrupted before the first epoch completed; nothing was saved") from None
        raise Interrupted(f"interrupted after {len(rows)} completed epoch(s); the run is kept in {staging}; "
                          f"continue it with `imgclf train --resume {staging.name}"
                          f"{' --registry ' + str(registry_dir) if registry_dir else ''}`") from None

    metrics = {}
    history = _history_rows(history_path)
    if history:
        last = history[-1]
        # as logged during the last epoch (dropout on); val/test below are the restored best weights
        metrics["last_epoch_train_loss"] = float(last["loss"])
        metrics["last_epoch_train_accuracy"] = float(last["accuracy"])
    metrics["epochs_run"] = len(history)
    for split_name, d in (("val", va), ("test", te)):
        if d is not None and len(d.labels):
            loss, acc = model.evaluate(make_dataset(d.pixels, d.labels, cfg.batch_size), verbose=0)
            metrics[f"{split_name}_loss"], metrics[f"{split_name}_accuracy"] = float(loss), float(acc)

    model.save(staging / registry.KERAS_FILE)
    sample_source = (te if te is not None else va if va is not None else tr)
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(sample_source.paths), size=min(N_SAMPLE_PATHS, len(sample_source.paths)), replace=False)
    metadata = {
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),  # orders `latest`
        "arch": cfg.arch,
        "class_names": splits.class_names,
        "preprocessing": spec.to_dict(),
        "image_size": list(spec.image_size),
        "channels": spec.channels,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "class_weight": {splits.class_names[i]: w for i, w in weights.items()} if weights else None,
        "dataset": {
            "source": os.path.abspath(data),
            "fingerprint": _fingerprint(tr.paths + (va.paths if va else []) + (te.paths if te else [])),
            "val_held_out": splits.held_out,
            "skipped": len(splits.problems) + sum(len(d.problems) for d in decoded.values()),
            "train": _summary(splits.train, tr), "val": _summary(splits.val, va), "test": _summary(splits.test, te),
        },
        "metrics": metrics,
        "sample_paths": [os.path.abspath(sample_source.paths[i]) for i in sorted(picks)],
        "library_versions": library_versions(),
    }
    for leftover in list(staging.glob("backup-*")) + list(staging.glob("after-*.weights.h5")) + [staging / "run.json"]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.exists():
            leftover.unlink()
    version, final = registry.commit(root, staging, name, metadata)
    metadata.update(version=version, path=str(final))
    return metadata


def _make_epoch_logger():
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """Per-epoch progress on stderr and history.csv/run.json in the staging folder."""

        def __init__(self, history_path, phase, offset, staging, reporter, epochs):
            super().__init__()
            self.history_path, self.phase, self.offset = history_path, phase, offset
            self.staging, self.reporter, self.epochs = staging, reporter, epochs
            self.bar = None

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()
            steps = self.params.get("steps")
            self.bar = self.reporter.epoch_bar(f"{self.phase} epoch {epoch + 1}/{self.epochs}", steps)
            self.bar.__enter__()

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                logs = logs or {}
                self.bar.update(batch + 1, f"loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f}")

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None
            seconds = time.perf_counter() - self.t0
            lr = self.model.optimizer.learning_rate
            row = {"epoch": self.offset + epoch + 1, "phase": self.phase, "lr": f"{float(np.asarray(lr)):.6g}",
                   "seconds": f"{seconds:.2f}"}
            for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if k in logs:
                    row[k] = f"{float(logs[k]):.6f}"
            _append_history(self.history_path, row)
            info = registry.read_json(self.staging / "run.json")
            info["epochs_done"] = len(_history_rows(self.history_path))
            registry.write_json_atomic(self.staging / "run.json", info)
            val = (f", val_loss {logs['val_loss']:.4f}, val_acc {logs['val_accuracy']:.4f}"
                   if "val_loss" in logs else "")
            self.reporter.info(f"{self.phase} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', 0):.4f}, "
                               f"acc {logs.get('accuracy', 0):.4f}{val} ({seconds:.1f}s)")

    return EpochLogger


def _warm_plateau(keras):
    class WarmReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
        """ReduceLROnPlateau that, like our early stopping, ignores the BatchNorm warm-up epochs."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch >= WARMUP_EPOCHS:
                super().on_epoch_end(epoch, logs)

    return WarmReduceLROnPlateau


def _EpochLogger(*args):
    return _make_epoch_logger()(*args)
