"""A training run in the registry, from its staging folder to a committed version.

    ROOT/.staging/RUN/run.json      data folder, resolved config, pid, epochs done (what --resume reads)
    ROOT/.staging/RUN/history.csv   one row per completed epoch, appended and fsynced as it ends
    ROOT/.staging/RUN/backup-PHASE/ Keras BackupAndRestore checkpoints of the phase in progress
    ROOT/.staging/RUN/after-PHASE.weights.h5  the best weights of a finished phase

`start_run` makes the folder, `resume_run` reopens an interrupted one, `Run.commit` clears the
checkpoints and renames the folder into ROOT/NAME/VERSION (registry.commit), `Run.abandon` handles a
run that failed or was interrupted: nothing worth keeping leaves no debris.
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Tuple

from imgclf import registry
from imgclf.config import RUN_FILE, TrainConfig
from imgclf.errors import DataError, Interrupted, UsageError

#: seconds: the whole epoch; train_seconds: its training steps; val_seconds: its validation pass (the rest is
#: the callbacks: checkpoints, early stopping)
HISTORY_FIELDS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                  "train_seconds", "val_seconds"]


@dataclass
class Run:
    root: Path          # the registry root
    staging: Path       # ROOT/.staging/RUN
    resumed: bool

    @property
    def id(self) -> str:
        return self.staging.name

    @property
    def history_path(self) -> Path:
        return self.staging / registry.HISTORY

    def history(self) -> List[dict]:
        return read_history(self.history_path)

    def append_history(self, row: dict) -> None:
        """One completed epoch: on disk (fsynced) before the next begins, and counted in run.json."""
        new = not self.history_path.exists()
        fields = HISTORY_FIELDS
        if not new:  # a run begun by an older imgclf keeps its columns
            with open(self.history_path, newline="") as f:
                fields = next(csv.reader(f), None) or HISTORY_FIELDS
        with open(self.history_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in fields})
            f.flush()
            os.fsync(f.fileno())
        info = registry.read_json(self.staging / RUN_FILE)
        info["epochs_done"] = len(self.history())
        registry.write_json_atomic(self.staging / RUN_FILE, info)

    def checkpoint_dir(self, phase: str) -> Path:
        return self.staging / f"backup-{phase}"

    def phase_weights(self, phase: str) -> Path:
        return self.staging / f"after-{phase}.weights.h5"

    def commit(self, name: str, metadata: dict) -> Tuple[int, Path]:
        """Drop the checkpoints and make the run a registry version (atomically)."""
        for leftover in [*self.staging.glob("backup-*"), *self.staging.glob("after-*.weights.h5"),
                         self.staging / RUN_FILE]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                leftover.unlink()
        return registry.commit(self.root, self.staging, name, metadata)

    def abandon(self, exc: BaseException, registry_dir=None) -> None:
        """Called with the exception that ended the run. Raises what the user should see."""
        rows = self.history()
        if not rows and not self.resumed:  # nothing worth keeping: leave no debris
            shutil.rmtree(self.staging, ignore_errors=True)
        if not isinstance(exc, KeyboardInterrupt):
            raise exc
        if not rows:
            raise Interrupted("interrupted before the first epoch completed; nothing was saved") from None
        raise Interrupted(f"interrupted after {len(rows)} completed epoch(s); the run is kept in {self.staging}; "
                          f"continue it with `imgclf train --resume {self.id}"
                          f"{' --registry ' + str(registry_dir) if registry_dir else ''}`") from None


def read_history(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_run(root: Path, run_id: str) -> Tuple[str, TrainConfig, dict]:
    """(data folder, config, run.json) of the unfinished run `run_id`; a clear error when there is none,
    or when its process is still training."""
    staging = root / registry.STAGING / run_id
    if not (staging / RUN_FILE).is_file():
        runs = sorted(p.name for p in (root / registry.STAGING).glob("*") if (p / RUN_FILE).is_file()) \
            if (root / registry.STAGING).is_dir() else []
        raise UsageError(f"no unfinished run {run_id!r} in {root}" +
                         (f"; unfinished runs: {', '.join(runs)}" if runs else ""))
    info = registry.read_json(staging / RUN_FILE)
    if info.get("pid") != os.getpid() and registry.pid_alive(info.get("pid")):
        raise UsageError(f"run {run_id} is still in progress (process {info['pid']}); wait for it or stop it first")
    return info["data"], TrainConfig.from_dict(info["config"]), info


def start_run(root: Path, name: str, data, cfg: TrainConfig, resume: Optional[str] = None,
              fingerprint: Optional[str] = None) -> Run:
    """A new staging folder (or the one of `resume`), with run.json written for this process. `fingerprint`
    (of the images) is kept in run.json: resuming with other images is refused, since it would train one
    model on two datasets."""
    staging = root / registry.STAGING / resume if resume else registry.new_staging(root, name)
    info = {"data": os.path.abspath(data), "config": cfg.to_dict(), "pid": os.getpid(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "epochs_done": 0,
            "fingerprint": fingerprint}
    if resume:
        old = registry.read_json(staging / RUN_FILE)
        if old.get("fingerprint") and fingerprint and old["fingerprint"] != fingerprint:
            raise DataError(f"{data}: the images changed since run {resume} started (files added, removed or "
                            "resized); resuming would train one model on two datasets: start a new run")
        info.update({k: old[k] for k in ("started", "epochs_done") if k in old})
    registry.write_json_atomic(staging / RUN_FILE, info)
    run = Run(root, staging, resumed=bool(resume))
    if not resume and run.history_path.exists():
        run.history_path.unlink()
    return run
