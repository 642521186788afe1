"""Issue 14: the training recipe options of `imgclf train`: `--lr-schedule plateau|cosine` and
`--label-smoothing S`, the values they default to, and what a user sees of them (history.csv's lr column,
metadata.json, the reported losses, one-line errors for bad values)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from conftest import cli, error_line
from imgclf.config import PRETRAINED_DEFAULTS, SCRATCH_DEFAULTS, TrainConfig, resolve


def _train(tmp_path, data, *extra):
    registry = tmp_path / "reg"
    r = cli("train", data, "--registry", registry, "--arch", "mlp", "--image-size", 16, "--name", "m",
            "--format", "json", *extra)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    with open(f"{info['path']}/history.csv") as f:
        history = list(csv.DictReader(f))
    with open(f"{info['path']}/metadata.json") as f:
        meta = json.load(f)
    return info, history, meta


def test_cosine_warms_up_then_falls_to_zero_by_the_last_epoch(tmp_path, colour_data):
    _, history, meta = _train(tmp_path, colour_data, "--epochs", 4, "--lr", "0.01", "--lr-schedule", "cosine",
                              "--patience", 0)
    lrs = [float(r["lr"]) for r in history]
    assert len(lrs) == 4
    # logged at each epoch's end: the warm-up reaches the peak after epoch 1, then a cosine down to 0
    assert lrs[0] == pytest.approx(0.01, rel=1e-3)
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3]
    assert lrs[1] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 3)), rel=0.05)  # 1 of 3 decay epochs
    assert lrs[3] < 1e-6
    assert meta["config"]["lr_schedule"] == "cosine"


def test_plateau_keeps_the_rate_while_val_loss_improves(tmp_path, colour_data):
    _, history, meta = _train(tmp_path, colour_data, "--epochs", 3, "--lr", "0.01", "--lr-schedule", "plateau")
    assert [float(r["lr"]) for r in history] == [0.01, 0.01, 0.01]  # no halving inside the warm-up epochs
    assert meta["config"]["lr_schedule"] == "plateau"


def test_cosine_schedule_values():
    import keras

    from imgclf.train import cosine_schedule

    s = cosine_schedule(keras, 1e-3, epochs=5, steps_per_epoch=10)
    at = lambda step: float(s(step))  # noqa: E731
    assert at(0) == pytest.approx(1e-4)          # warm-up starts at lr/10
    assert at(10) == pytest.approx(1e-3)         # the peak after one epoch
    assert at(30) == pytest.approx(0.5e-3, rel=1e-3)  # half-way through the 40 decay steps
    assert at(50) == pytest.approx(0.0, abs=1e-9)
    one = cosine_schedule(keras, 1e-3, epochs=1, steps_per_epoch=10)  # a 1-epoch phase: no warm-up
    assert float(one(0)) == pytest.approx(1e-3) and float(one(10)) == pytest.approx(0.0, abs=1e-9)


def test_label_smoothing_loss_matches_the_formula():
    import keras

    from imgclf.train import training_loss

    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    y = np.array([0, 2])
    plain = float(keras.losses.SparseCategoricalCrossentropy()(y, p))
    assert training_loss(keras, 0.0) == "sparse_categorical_crossentropy"
    smoothed = float(training_loss(keras, 0.3)(y, p))
    # targets: 1 - 0.3 + 0.3/3 on the true class, 0.3/3 elsewhere
    t = np.full((2, 3), 0.1)
    t[0, 0] = t[1, 2] = 0.8
    assert smoothed == pytest.approx(float(np.mean(-(t * np.log(p)).sum(axis=1))), rel=1e-5)
    assert smoothed > plain


def test_label_smoothing_is_recorded_and_reported_losses_stay_plain_cross_entropy(tmp_path, colour_data):
    info, history, meta = _train(tmp_path, colour_data, "--epochs", 3, "--label-smoothing", "0.2",
                                 "--patience", 0, "--calibrate", "none")
    assert meta["config"]["label_smoothing"] == 0.2
    # val_loss in metrics.json is the plain cross-entropy of the saved model's val predictions
    import keras

    from imgclf.data.pipeline import decode
    from imgclf.data.split import load_splits
    from imgclf.preprocessing import PreprocessingSpec

    model = keras.models.load_model(f"{info['path']}/model.keras", compile=False)
    spec = PreprocessingSpec.from_dict(meta["preprocessing"])
    val = load_splits(colour_data, 0.1, 42).val
    d = decode(val.paths, val.labels, spec)
    p = model.predict(d.pixels.astype("float32"), verbose=0)
    ce = float(np.mean(-np.log(p[np.arange(len(d.labels)), d.labels])))
    assert info["metrics"]["val_loss"] == pytest.approx(ce, rel=1e-3)


@pytest.mark.parametrize("args,words", [
    (["--label-smoothing", "0.7"], "--label-smoothing must be between 0.0 and 0.5, got 0.7"),
    (["--label-smoothing", "-0.1"], "--label-smoothing must be between 0.0 and 0.5, got -0.1"),
])
def test_bad_label_smoothing_is_one_line(tmp_path, colour_data, args, words):
    r = cli("train", colour_data, "--registry", tmp_path / "reg", "--arch", "mlp", *args)
    assert words in error_line(r)
    assert not (tmp_path / "reg").exists() or not any((tmp_path / "reg").glob("*/[0-9]*"))


def test_bad_lr_schedule_is_refused_by_the_command_line(tmp_path, colour_data):
    r = cli("train", colour_data, "--registry", tmp_path / "reg", "--lr-schedule", "step")
    assert r.exit_code == 2
    assert "Invalid value for '--lr-schedule'" in r.stderr and "plateau" in r.stderr and "cosine" in r.stderr


def test_recipe_defaults_by_how_the_network_starts():
    scratch = resolve(TrainConfig(), pretrained=False)
    assert scratch.lr_schedule is None  # left until the replica count is known
    scratch = resolve(scratch, pretrained=False, replicas=1)
    assert (scratch.lr_schedule, scratch.label_smoothing) == (SCRATCH_DEFAULTS["lr_schedule"],
                                                              SCRATCH_DEFAULTS["label_smoothing"])
    pre = resolve(TrainConfig(lr_schedule="cosine"), pretrained=True, replicas=1)
    assert pre.lr_schedule == "cosine"  # given wins
    assert pre.label_smoothing == PRETRAINED_DEFAULTS["label_smoothing"]
    # a run recorded before these options existed still loads (and gets the defaults on resume)
    old = TrainConfig().to_dict()
    del old["lr_schedule"], old["label_smoothing"]
    assert TrainConfig.from_dict(old).lr_schedule is None


def test_from_scratch_large_data_sets_get_fewer_epochs_by_default():
    from imgclf.config import SCRATCH_IMAGE_BUDGET

    def epochs(n, pretrained=False, **given):
        return resolve(TrainConfig(**given), pretrained=pretrained, n_train=n).epochs

    assert epochs(480) == SCRATCH_DEFAULTS["epochs"] == 15    # the quickstart: all 15
    assert epochs(54_000) == 12 == -(-SCRATCH_IMAGE_BUDGET // 54_000)  # Fashion-MNIST less its val split
    assert epochs(10_000_000) == 1
    assert epochs(54_000, epochs=20) == 20                    # given wins
    assert epochs(54_000, pretrained=True) == PRETRAINED_DEFAULTS["epochs"]  # head epochs: not shrunk
    assert epochs(None) == 15


def test_short_runs_from_scratch_keep_the_plateau_schedule():
    from imgclf.config import COSINE_MIN_STEPS

    def schedule(n, pretrained=False, replicas=1, **given):
        cfg = resolve(TrainConfig(**given), pretrained=pretrained, n_train=n)
        return resolve(cfg, pretrained=pretrained, n_train=n, replicas=replicas).lr_schedule

    assert schedule(54_000) == SCRATCH_DEFAULTS["lr_schedule"] == "cosine"   # 12 epochs x 422 steps
    assert schedule(480) == "plateau"                                       # the quickstart: 15 x 8 steps
    assert schedule(6_000, epochs=3) == "plateau"                           # 3 x 94 steps
    assert schedule(6_000, epochs=15) == "cosine"                           # 15 x 94 = 1,410 steps
    assert schedule(COSINE_MIN_STEPS * 64, epochs=1) == "cosine"
    assert schedule(COSINE_MIN_STEPS * 64 - 64, epochs=1) == "plateau"
    assert schedule(5_000) == "cosine"                                      # 15 x 79 = 1,185 steps
    assert schedule(5_000, replicas=2) == "plateau"                         # 15 x 40: the global batch counts
    assert schedule(480, lr_schedule="cosine") == "cosine"                  # given wins
    assert schedule(480, pretrained=True) == PRETRAINED_DEFAULTS["lr_schedule"]


def test_long_runs_from_scratch_get_the_larger_batch_and_its_learning_rate():
    from imgclf.config import COSINE_MIN_STEPS, SCRATCH_LONG_RUN

    def batch_lr(n, pretrained=False, **given):
        cfg = resolve(TrainConfig(**given), pretrained=pretrained, n_train=n)
        return cfg.batch_size, cfg.lr

    big, default = (SCRATCH_LONG_RUN["batch_size"], SCRATCH_LONG_RUN["lr"]), (64, SCRATCH_DEFAULTS["lr"])
    assert big == (128, 2e-3) and SCRATCH_DEFAULTS["batch_size"] == 64
    assert batch_lr(54_000) == big                              # Fashion-MNIST: 12 epochs x 422 steps of 128
    assert batch_lr(480) == default                             # the quickstart
    assert batch_lr(6_000, epochs=3) == default                 # 3 epochs on 6,000 images
    assert batch_lr(6_000, epochs=15) == default                # 15 x 47 steps of 128: long at 64 only
    # the line: COSINE_MIN_STEPS steps at the larger batch
    assert batch_lr(COSINE_MIN_STEPS * 128, epochs=1) == big
    assert batch_lr(COSINE_MIN_STEPS * 128 - 128, epochs=1) == default
    assert batch_lr(54_000, lr=5e-4) == (128, 5e-4)             # a given lr wins
    assert batch_lr(54_000, batch_size=32) == (32, SCRATCH_DEFAULTS["lr"])  # a given batch keeps lr 1e-3
    assert batch_lr(54_000, pretrained=True) == (PRETRAINED_DEFAULTS["batch_size"], PRETRAINED_DEFAULTS["lr"])
    assert batch_lr(None) == default


def test_small_sets_on_a_pretrained_network_get_the_smaller_batch():
    """Under PRETRAINED_SMALL_SET images a pretrained run takes batches of 16: four times the head's steps
    (240 photos: 90 instead of 24); from 1,000 images, and from scratch, nothing changes; --batch-size wins."""
    from imgclf.config import PRETRAINED_SMALL_SET, resolve

    def batch(n, pretrained=True, **given):
        return resolve(TrainConfig(**given), pretrained=pretrained, n_train=n).batch_size

    assert PRETRAINED_SMALL_SET == {"images": 1_000, "batch_size": 16}
    assert batch(240) == batch(999) == 16
    assert batch(1_000) == batch(1_716) == PRETRAINED_DEFAULTS["batch_size"] == 64
    assert batch(240, pretrained=False) == SCRATCH_DEFAULTS["batch_size"]
    assert batch(240, batch_size=32) == 32
    assert batch(None) == 64                                   # size unknown: the usual default
    assert resolve(resolve(TrainConfig(), True, 240), True, 240, replicas=1).batch_size == 16   # resolved twice


def test_small_image_cnn_has_two_convolutions_at_half_resolution():
    import keras

    from imgclf.architectures import get_architecture

    model = get_architecture("cnn").build((28, 28, 1), 10, None)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [(l.name, l.filters, l.output.shape[1]) for l in convs] == [
        ("b1_conv", 32, 28), ("b2_conv", 64, 14), ("b2b_conv", 64, 14), ("b3_conv", 128, 7)]
    # no dropout for small images (+0.25 test accuracy on Fashion-MNIST in the 9-epoch budget)
    assert not [l.name for l in model.layers if isinstance(l, keras.layers.Dropout)]
    photo = get_architecture("cnn").build((64, 64, 3), 2, None)
    assert "b2b_conv" not in [l.name for l in photo.layers]  # the photo graph is unchanged
    assert [l.name for l in photo.layers if isinstance(l, keras.layers.Dropout)] == [
        "b1_drop", "b2_drop", "b3_drop", "head_drop"]
