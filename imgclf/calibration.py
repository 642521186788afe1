"""Calibrated confidence: temperature scaling, calibration metrics and risk-coverage.

A model's softmax output p is recalibrated with one scalar T, fitted on the validation split at the end of
`imgclf train` by minimising the negative log-likelihood:

    p_T = softmax(log(p) / T)      (log p = z - logsumexp(z), so this is exactly softmax(z / T))

T > 1 softens overconfident probabilities, T < 1 sharpens underconfident ones; the arg-max (the label)
never changes. T lives in metadata.json under "calibration"; a model without it behaves as T = 1.
`apply_temperature` is the ONE place T is applied: predict (NumPy, either backend), evaluate, and the
exported ONNX graph (the same function on TensorFlow's NumPy API, see export.py).

Needs only NumPy: the ONNX prediction path must not import TensorFlow.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from imgclf.config import CALIBRATION_METHODS as METHODS, INFERENCE_BATCH_SIZE

#: ECE uses this many equal-width confidence bins
ECE_BINS = 15
#: the smallest normal float32: log(0) guard that keeps every probability float32 can represent
FLOOR = float(np.finfo(np.float32).tiny)
#: the temperature search range (a fit that ends at a limit is reported: too few or separable images)
T_MIN, T_MAX = 0.02, 50.0
#: below this many validation images the fitted T is reported as unreliable
FEW_IMAGES = 50
#: thresholds of the risk-coverage table
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def apply_temperature(probs, temperature: float, xp=np):
    """softmax(log(max(p, FLOOR)) / T) along the last axis. `xp` is NumPy, or TensorFlow's NumPy API
    (`tf.experimental.numpy`) inside the exported graph. T = 1 returns `probs` itself (bit for bit)."""
    temperature = float(temperature)
    if temperature == 1.0:
        return probs
    floor = xp.asarray(FLOOR, dtype=probs.dtype)
    z = xp.log(xp.maximum(probs, floor)) * xp.asarray(1.0 / temperature, dtype=probs.dtype)
    z = z - xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(z)
    return e / xp.sum(e, axis=-1, keepdims=True)


def temperature_of(metadata: Optional[dict]) -> float:
    """The model's temperature: metadata["calibration"]["temperature"], else 1 (older or uncalibrated models)."""
    cal = (metadata or {}).get("calibration") or {}
    try:
        t = float(cal.get("temperature", 1.0))
    except (TypeError, ValueError):
        return 1.0
    return t if math.isfinite(t) and t > 0 else 1.0


# ------------------------------------------------------------------------------------------- metrics


def _as_arrays(probs, labels):
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probabilities {p.shape} and labels {y.shape} do not match")
    return p, y


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true class."""
    p, y = _as_arrays(probs, labels)
    # + 0.0: no "-0.0" when every true class gets probability 1
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], FLOOR)))) + 0.0 if len(y) else 0.0


def brier(probs, labels) -> float:
    """Multi-class Brier score: mean over images of sum_k (p_k - [k == true])^2 (0 best, 2 worst)."""
    p, y = _as_arrays(probs, labels)
    if not len(y):
        return 0.0
    target = np.zeros_like(p)
    target[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - target) ** 2, axis=1)))


def reliability_bins(probs, labels, bins: int = ECE_BINS) -> List[dict]:
    """Equal-width bins (i/bins, (i+1)/bins] of the top probability: images, mean confidence, accuracy."""
    p, y = _as_arrays(probs, labels)
    conf = p.max(axis=1) if len(y) else np.zeros(0)
    correct = (p.argmax(axis=1) == y) if len(y) else np.zeros(0, bool)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        out.append({"low": b / bins, "high": (b + 1) / bins, "images": n,
                    "confidence": float(conf[m].mean()) if n else None,
                    "accuracy": float(correct[m].mean()) if n else None})
    return out


def ece(probs, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (share of images) * |accuracy - mean confidence|."""
    p, _ = _as_arrays(probs, labels)
    n = len(p)
    if not n:
        return 0.0
    return float(sum(b["images"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, labels, bins) if b["images"]))


# ------------------------------------------------------------------------------------------- fitting


def fit_temperature(probs, labels) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of softmax(log p / T): a grid on log T, then a
    golden-section search in the bracket around the best grid point (the NLL is smooth and, in practice,
    unimodal in log T)."""
    p, y = _as_arrays(probs, labels)
    if not len(y):
        return 1.0
    logp = np.log(np.maximum(p, FLOOR))

    def loss(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(lse - z[np.arange(len(y)), y]))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    grid = np.linspace(lo, hi, 41)
    values = [loss(g) for g in grid]
    best = int(np.argmin(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(60):
        if b - a < 1e-6:
            break
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    log_t = (a + b) / 2
    # never return something worse than the best grid point or than leaving the model alone (T = 1)
    candidates = [(loss(log_t), log_t), (values[best], grid[best]), (loss(0.0), 0.0)]
    return float(math.exp(min(candidates)[1]))


def calibration_record(raw_probs, labels, method: str = "temperature", fitted_on: str = "val") -> dict:
    """What `imgclf train` stores in metadata.json["calibration"]."""
    from datetime import datetime, timezone

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    n = int(len(labels))
    fitted = fit_temperature(raw_probs, labels) if method == "temperature" else 1.0
    # at a search limit the NLL has no minimum inside: typically every validation image is right, and the NLL
    # only falls as T -> 0 (every probability pushed to 1). Such a T says nothing about new data: keep T = 1.
    at_limit = method == "temperature" and not (T_MIN * 1.001 < fitted < T_MAX / 1.001)
    t = 1.0 if at_limit else fitted
    cal = apply_temperature(np.asarray(raw_probs, dtype=np.float64), t)
    record = {
        "method": method, "temperature": round(t, 6), "fitted_on": fitted_on, "images": n,
        "nll_uncalibrated": round(nll(raw_probs, labels), 6), "nll": round(nll(cal, labels), 6),
        "ece_uncalibrated": round(ece(raw_probs, labels), 6), "ece": round(ece(cal, labels), 6),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if at_limit:
        record.update(fitted_temperature=round(fitted, 6),
                      reason=f"the fit ended at its search limit ({T_MIN} or {T_MAX}); T = 1 kept")
    return record


def calibrate_keras_model(model, val, method: str = "temperature", batch_size: int = INFERENCE_BATCH_SIZE,
                          reporter=None) -> dict:
    """Fit T for a trained Keras model on the decoded validation split `val` (.pixels, .labels; None when
    there is none) and log what was found. The metadata.json["calibration"] record."""
    if method == "none":
        return {"method": "none", "temperature": 1.0}
    pixels, labels = (val.pixels, val.labels) if val is not None else (None, [])
    if pixels is None or not len(labels):
        if reporter:
            reporter.warn("--calibrate temperature needs a validation split; the model is not calibrated (T = 1)")
        return {"method": "none", "temperature": 1.0, "reason": "no validation images"}
    raw = np.concatenate([np.asarray(model(np.asarray(pixels[i:i + batch_size], dtype=np.float32),
                                           training=False), dtype=np.float32)
                          for i in range(0, len(labels), batch_size)])
    record = calibration_record(raw, labels, method)
    if reporter and "reason" in record:
        reporter.warn(f"the temperature fit on {record['images']} validation images ended at its search limit "
                      f"(T = {record['fitted_temperature']:g}): too few images, or all classified right; "
                      "keeping T = 1")
    elif reporter:
        reporter.info(f"calibrated on {record['images']} validation images: temperature {record['temperature']:.3f} "
                      f"(NLL {record['nll_uncalibrated']:.4f} -> {record['nll']:.4f}, "
                      f"ECE {record['ece_uncalibrated']:.4f} -> {record['ece']:.4f})")
        if record["images"] < FEW_IMAGES:
            reporter.warn(f"the temperature was fitted on only {record['images']} validation images; "
                          "it may not hold on new data")
    return record


# -------------------------------------------------------------------------------- abstaining, coverage


def risk_coverage(probs, labels, thresholds: Sequence[float] = THRESHOLDS) -> List[dict]:
    """For each threshold t: the share of images whose top probability is >= t (coverage) and the accuracy
    on those (None when none is kept)."""
    p, y = _as_arrays(probs, labels)
    conf = p.max(axis=1) if len(y) else np.zeros(0)
    correct = (p.argmax(axis=1) == y) if len(y) else np.zeros(0, bool)
    rows = []
    for t in thresholds:
        kept = conf >= t
        k = int(kept.sum())
        rows.append({"threshold": float(t), "coverage": round(k / len(y), 6) if len(y) else 0.0,
                     "accuracy": round(float(correct[kept].mean()), 6) if k else None})
    return rows


def threshold_for_accuracy(probs, labels, target: float) -> dict:
    """The lowest confidence threshold t such that the images with top probability >= t are classified with
    accuracy >= target, with the coverage and accuracy it gives. threshold None when no t reaches it."""
    p, y = _as_arrays(probs, labels)
    out = {"target": float(target), "threshold": None, "coverage": 0.0, "accuracy": None}
    if not len(y):
        return out
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    k = np.arange(1, len(y) + 1)
    acc = np.cumsum(correct) / k
    # keeping "conf >= t" keeps the top k images only where the next one is strictly less confident
    boundary = np.append(conf[:-1] > conf[1:], True)
    ok = np.flatnonzero(boundary & (acc >= target - 1e-12))
    if not len(ok):
        return out
    i = int(ok[-1])                      # the most images kept, i.e. the lowest threshold
    threshold = 0.0 if i == len(y) - 1 else float(conf[i])
    out.update(threshold=math.floor(threshold * 1e6) / 1e6, coverage=round((i + 1) / len(y), 6),
               accuracy=round(float(acc[i]), 6))
    return out


def evaluation_report(raw_probs, labels, temperature: float, target_accuracy: Optional[float] = None):
    """The calibration part of `imgclf evaluate`: (report keys "calibration", "risk_coverage", "reliability"
    and, with a target, "target_accuracy"; the calibrated probabilities)."""
    raw = np.asarray(raw_probs, dtype=np.float64)
    cal = apply_temperature(raw, temperature)
    report = {
        "calibration": {
            "temperature": round(float(temperature), 6),
            "ece": round(ece(cal, labels), 6), "ece_uncalibrated": round(ece(raw, labels), 6),
            "nll": round(nll(cal, labels), 6), "nll_uncalibrated": round(nll(raw, labels), 6),
            "brier": round(brier(cal, labels), 6), "brier_uncalibrated": round(brier(raw, labels), 6),
            "bins": ECE_BINS,
        },
        "risk_coverage": risk_coverage(cal, labels),
        "reliability": {"calibrated": reliability_bins(cal, labels), "uncalibrated": reliability_bins(raw, labels)},
    }
    if target_accuracy is not None:
        report["target_accuracy"] = threshold_for_accuracy(cal, labels, target_accuracy)
    return report, cal


def check_probability(name: str, value: Optional[float]) -> None:
    """--min-confidence / --target-accuracy: a probability in [0, 1]."""
    from imgclf.errors import UsageError

    if value is not None and not (0.0 <= value <= 1.0):
        raise UsageError(f"--{name} must be between 0 and 1, got {value}")
