"""config.resolve: the one function that fills a TrainConfig's unset options. It returns a new object and
leaves the one it was given alone; the in-place methods train.py still calls give the same result."""
from __future__ import annotations

import itertools

import pytest

from imgclf import config as C


CASES = list(itertools.product([True, False], [None, 480, 54_000], [None, 3], [None, 32], [None, "light"],
                               [1, 4]))


@pytest.mark.parametrize("pretrained,n_train,epochs,batch_size,policy,replicas", CASES)
def test_resolve_returns_a_new_config_and_changes_nothing(pretrained, n_train, epochs, batch_size, policy, replicas):
    given = C.TrainConfig(epochs=epochs, batch_size=batch_size, augment_policy=policy,
                          augment_overrides={"rotate": 3.0} if policy is None else {})
    before = given.to_dict()
    out = C.resolve(given, pretrained, n_train, replicas)
    assert out is not given and out.augment is not given.augment
    assert given.to_dict() == before                                # the caller's object is untouched
    for key in ("epochs", "batch_size", "lr", "fine_tune_epochs", "label_smoothing", "memory", "augment_policy",
                "lr_schedule"):
        assert getattr(out, key) is not None, key
    assert C.resolve(out, pretrained, n_train, replicas).to_dict() == out.to_dict()   # resolving twice: no change
    if epochs is not None:
        assert out.epochs == epochs                                  # a given option wins
    if batch_size is not None:
        assert out.batch_size == batch_size
    if policy is None and out.augment_policy != "none":
        assert out.augment.rotate == 3.0                             # --rotate over the default policy
    in_two_steps = C.resolve(C.resolve(given, pretrained, n_train), pretrained, n_train, replicas)  # as train does
    assert in_two_steps.to_dict() == out.to_dict()
    assert not hasattr(C.TrainConfig, "resolve_defaults")           # no in-place resolving left


def test_resolve_without_replicas_leaves_the_schedule_to_later():
    out = C.resolve(C.TrainConfig(), pretrained=False, n_train=54_000)
    assert out.lr_schedule is None and out.batch_size == C.SCRATCH_LONG_RUN["batch_size"]
    assert C.resolve(out, False, 54_000, replicas=1).lr_schedule == C.SCRATCH_DEFAULTS["lr_schedule"]
    # two replicas halve the steps: the quickstart-sized run keeps plateau
    assert C.resolve(C.TrainConfig(), False, 480, replicas=2).lr_schedule == "plateau"


def test_pretrained_defaults_win_over_the_architectures_image_size():
    """config.py's stated order: PRETRAINED_DEFAULTS' image size is filled in, so it beats MobileNet's 224;
    from scratch the size stays unset (the architecture's own default, or the data, decides)."""
    assert C.resolve(C.TrainConfig(), True, 480, 1).image_size == C.PRETRAINED_DEFAULTS["image_size"]
    assert C.resolve(C.TrainConfig(), False, 480, 1).image_size is None
    assert C.resolve(C.TrainConfig(image_size=96), True, 480, 1).image_size == 96
