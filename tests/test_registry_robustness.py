"""Crash-safe, concurrent registry and resumable training (issue 4).

The process tests start real `imgclf train` processes: four at once into one registry, killed with SIGKILL at
known moments (each child pauses at a marker and is killed there), and interrupted with SIGINT and resumed.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import child_env, cli, error_line, make_tree, interrupt, start_paused, wait_for

REQUIRED_FILES = {"model.keras", "metadata.json", "history.csv"}


def listing(registry: Path) -> dict:
    r = cli("models", "list", "--registry", registry, "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def history_rows(path: Path):
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_every_listed_version_is_complete(registry: Path) -> list:
    """Each listed model has all its files, valid metadata and loads (safe_mode)."""
    import keras

    models = listing(registry)["models"]
    for m in models:
        folder = Path(m["path"])
        assert REQUIRED_FILES <= {p.name for p in folder.iterdir()}, folder
        meta = json.loads((folder / "metadata.json").read_text())
        assert (meta["name"], meta["version"]) == (m["name"], m["version"]) == (folder.parent.name, int(folder.name))
        assert len(history_rows(folder / "history.csv")) == meta["metrics"]["epochs_run"] >= 1
        model = keras.models.load_model(folder / "model.keras", safe_mode=True, compile=False)
        assert model.output_shape[-1] == len(meta["class_names"])
        show = cli("models", "show", f"{m['name']}:{m['version']}", "--registry", registry)
        assert show.exit_code == 0, show.output
    return models


def start_train(data: Path, registry: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgclf", "train", str(data), "--registry", str(registry),
                             "--patience", "0", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    """Enough images that an epoch at batch size 4 takes a noticeable moment."""
    return make_tree(tmp_path_factory.mktemp("slow") / "slow", {"dark": 32, "bright": 32}, mode="L",
                     size=(32, 32), seed=12)


# ------------------------------------------------------------------------------------------- debris

def test_staging_debris_is_not_a_model_and_list_warns(registry_copy):
    run = registry_copy / ".staging" / "colours-20240101-000000-abcdef"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"pid": 999999, "epochs_done": 1, "data": "/x", "config": {}}))
    (run / "model.keras").write_bytes(b"half a zip file")
    (run / "history.csv").write_text("epoch,phase,loss\n1,train,0.5\n")
    (registry_copy / ".staging" / "killed-before-run-json").mkdir()
    # a version folder that never got its metadata (a writer that is not atomic), and one with broken JSON
    (registry_copy / "colours" / "7").mkdir()
    (registry_copy / "colours" / "7" / "model.keras").write_bytes(b"PK")
    (registry_copy / "colours" / "8").mkdir()
    (registry_copy / "colours" / "8" / "metadata.json").write_text("{\"name\": \"colours\", \"vers")

    r = cli("models", "list", "--registry", registry_copy)
    assert r.exit_code == 0, r.output
    warnings = [l for l in r.stderr.splitlines() if l.startswith("warning:")]
    assert any("colours-20240101-000000-abcdef" in l and "unfinished run" in l and "--resume" in l
               for l in warnings), r.stderr
    assert any("killed-before-run-json" in l for l in warnings)
    data = listing(registry_copy)
    assert [(m["name"], m["version"]) for m in data["models"]] == [("colours", 1)]
    assert len(data["unfinished"]) >= 2
    # no MODEL form loads the debris: `latest` skips it; the folder without metadata is not a version; the
    # broken one is refused with a one-line error (never silently replaced by an older version)
    assert json.loads(cli("models", "show", "latest", "--registry", registry_copy).stdout)["version"] == 1
    assert "no version 7" in error_line(cli("models", "show", "colours:7", "--registry", registry_copy))
    for ref in ("colours:8", "colours"):
        line = error_line(cli("models", "show", ref, "--registry", registry_copy))
        assert "colours/8" in line and "not a usable model folder" in line
    assert_every_listed_version_is_complete(registry_copy)


def test_models_clean_removes_only_runs_whose_process_is_gone(registry_copy):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    staging = registry_copy / ".staging"
    runs = {"dead-run": dead.pid, "live-run": os.getpid(), "no-run-json": None}
    for run, pid in runs.items():
        (staging / run).mkdir(parents=True)
        (staging / run / "history.csv").write_text("epoch\n1\n")
        if pid is not None:
            (staging / run / "run.json").write_text(json.dumps({"pid": pid, "epochs_done": 1}))
    entries = listing(registry_copy)["unfinished"]
    assert any("live-run" in e and "in progress" in e for e in entries), entries
    assert any("dead-run" in e and "interrupted" in e for e in entries), entries

    line = error_line(cli("models", "clean", "--registry", registry_copy, input=""))
    assert "--yes" in line
    assert {p.name for p in staging.iterdir()} == set(runs)            # nothing deleted without --yes

    r = cli("models", "clean", "--yes", "--registry", registry_copy)
    assert r.exit_code == 0, r.output
    assert {p.name for p in staging.iterdir()} == {"live-run"}          # a run in progress is left alone
    assert [(m["name"], m["version"]) for m in listing(registry_copy)["models"]] == [("colours", 1)]
    assert_every_listed_version_is_complete(registry_copy)


def test_resume_of_an_unknown_run_is_a_clear_error(registry_copy):
    (registry_copy / ".staging" / "real-run").mkdir(parents=True)
    (registry_copy / ".staging" / "real-run" / "run.json").write_text("{}")
    r = cli("train", "--resume", "no-such-run", "--registry", registry_copy)
    assert r.exit_code != 0
    line = [l for l in r.stderr.splitlines() if l.startswith("error:")][0]
    assert "no-such-run" in line and "real-run" in line


def test_train_without_data_or_resume_is_a_usage_error(tmp_path):
    r = cli("train", "--registry", tmp_path)
    assert r.exit_code == 2 and "--resume" in r.stderr


# ----------------------------------------------------------------------------------------- processes

def test_four_parallel_trainings_get_four_distinct_complete_versions(tmp_path):
    data = make_tree(tmp_path / "tiny", {"dark": 6, "bright": 6}, mode="L", seed=13)
    registry = tmp_path / "reg"
    procs = [start_train(data, registry, "--epochs", 1, "--image-size", 16, "--arch", "mlp", "--name", "par",
                         "--format", "json") for _ in range(4)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert "Traceback" not in err, err
        assert p.returncode == 0, err
    versions = sorted(json.loads(out)["version"] for out, _ in outs)
    assert versions == [1, 2, 3, 4]
    models = assert_every_listed_version_is_complete(registry)
    assert [(m["name"], m["version"]) for m in models] == [("par", v) for v in (1, 2, 3, 4)]
    assert listing(registry)["unfinished"] == []


def staged_runs(registry: Path):
    staging = registry / ".staging"
    return [p for p in staging.glob("*") if not p.name.startswith(".")] if staging.is_dir() else []


# Where a SIGKILL lands, made certain: the child pauses there (conftest.start_paused) and is killed while paused.
KILL_POINTS = {
    # the staging folder exists, nothing is in it yet
    "staging created": ("imgclf.registry.new_staging", "after", "True"),
    # epoch 1 is checkpointed (BackupAndRestore runs first) and its history row written
    "epoch 1 checkpointed": ("imgclf.runs.Run.append_history", "after", "True"),
    # metadata.json is in the staging folder, the lock is held, the rename into NAME/VERSION not yet done
    "inside the commit rename": ("os.rename", "before",
                                 "os.path.basename(os.path.dirname(str(args[0]))) == '.staging'"),
}


def test_sigkill_at_known_moments_leaves_the_registry_consistent(tmp_path, slow_data):
    registry = tmp_path / "reg"
    for point, (target, when, condition) in KILL_POINTS.items():
        marker = tmp_path / f"paused-{len(list(tmp_path.glob('paused-*')))}"
        proc = start_paused(target, marker, "train", slow_data, "--registry", registry, "--patience", 0,
                            "--epochs", 2, "--image-size", 16, "--arch", "mlp", "--name", "killed",
                            when=when, condition=condition)
        wait_for(marker, proc)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, err)   # the kill landed there
        assert "Traceback" not in err, err
        assert assert_every_listed_version_is_complete(registry) == [], point       # nothing half-made shows
        (run,) = [r for r in staged_runs(registry) if not (r / "killed").exists()]
        (run / "killed").write_text(point)
        unfinished = listing(registry)["unfinished"]
        assert any(run.name in u and "interrupted" in u for u in unfinished), (point, unfinished)
        if point == "epoch 1 checkpointed":
            assert len(history_rows(run / "history.csv")) == 1
            assert list(run.glob("backup-*"))
        if point == "inside the commit rename":
            assert (run / "metadata.json").is_file() and (run / "model.keras").is_file()
            assert not (registry / "killed" / "1").exists()
        print(f"SIGKILL {point}: {len(unfinished)} unfinished runs, no version")
    # the registry still works: the next run gets version 1 (no number was handed out by a killed commit)
    r = cli("train", slow_data, "--registry", registry, "--epochs", 1, "--image-size", 16, "--arch", "mlp",
            "--patience", 0, "--name", "killed", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == 1
    assert len(assert_every_listed_version_is_complete(registry)) == 1


def test_interrupt_after_one_epoch_then_resume_continues_the_weights(tmp_path, slow_data, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(slow_data, data)
    registry = tmp_path / "reg"
    marker = tmp_path / "epoch-1-logged"
    proc = start_paused("imgclf.runs.Run.append_history", marker, "train", data, "--registry", registry,
                        "--patience", 0, "--epochs", 3, "--image-size", 16, "--arch", "mlp", "--batch-size", 4,
                        "--name", "resumed")
    wait_for(marker, proc)
    (run,) = staged_runs(registry)
    # a run whose process is alive is not resumed a second time
    line = error_line(cli("train", "--resume", run.name, "--registry", registry))
    assert line == f"error: run {run.name} is still in progress (process {proc.pid}); wait for it or stop it first"
    err = interrupt(proc)                                 # Ctrl-C, while the first epoch is being logged
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"--resume {run.name}" in err and "interrupted after 1 completed epoch(s)" in err
    first = history_rows(run / "history.csv")
    assert len(first) == 1
    assert listing(registry)["models"] == []              # not a model yet ...
    assert any(run.name in u for u in listing(registry)["unfinished"])   # ... but a resumable run

    # the data changed meanwhile: a clear error, and the run is kept for when it is back
    extra = data / "dark" / "extra.png"
    shutil.copy(next((data / "bright").glob("*.png")), extra)
    r = cli("train", "--resume", run.name, "--registry", registry)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {data}: the images changed since run {run.name} started (files added, "
                             "removed or resized); resuming would train one model on two datasets: start a new run")
    assert history_rows(run / "history.csv") == first and (run / "run.json").is_file()
    extra.unlink()

    # the weights of epoch 1's checkpoint, as the interrupted process saved them
    import keras
    import numpy as np

    import imgclf.train
    from imgclf.architectures import get_architecture
    from imgclf.config import TrainConfig
    (checkpoint,) = (run / "backup-train").glob("latest.weights.h5")
    saved = get_architecture("mlp").build((16, 16, 1), 2, TrainConfig(arch="mlp"))
    fresh = [np.array(w) for w in saved.get_weights()]
    saved.load_weights(checkpoint)
    saved = [np.array(w) for w in saved.get_weights()]
    assert not all(np.array_equal(a, b) for a, b in zip(saved, fresh))
    started = []                               # the weights the resumed `fit` starts from (spy, no change)

    def spy_logger(*args):
        logger = real_logger(*args)
        logger.on_train_begin = lambda logs=None: started.append([np.array(w) for w in logger.model.get_weights()])
        return logger

    real_logger = imgclf.train._EpochLogger
    monkeypatch.setattr(imgclf.train, "_EpochLogger", spy_logger)
    keras.utils.set_random_seed(0)
    r = cli("train", "--resume", run.name, "--registry", registry, "--format", "json")
    assert r.exit_code == 0, r.output
    assert "resuming run" in r.stderr
    out = json.loads(r.stdout)
    assert (out["name"], out["version"]) == ("resumed", 1)
    final = Path(out["path"])
    rows = history_rows(final / "history.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert rows[0] == first[0]
    # the weights were restored: epoch 2 starts from epoch 1's checkpoint, not from a fresh initialisation
    (begin,) = started
    assert len(begin) == len(saved) and all(np.array_equal(a, b) for a, b in zip(begin, saved))
    meta = json.loads((final / "metadata.json").read_text())
    assert meta["metrics"]["epochs_run"] == 3 and meta["config"]["epochs"] == 3
    assert meta["config"]["batch_size"] == 4                # the run's own settings, from its run.json
    assert not run.exists() and listing(registry)["unfinished"] == []
    assert_every_listed_version_is_complete(registry)
