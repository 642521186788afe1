"""`imgclf compare` and the promotion gate of `imgclf models tag --gate`: two models on the same images,
image by image.

Both models classify every image of DATA (each with its own preprocessing spec and its calibrated
probabilities). The report counts the images both get right, both get wrong, and the ones only one of them
gets right; McNemar's exact test says how likely a split of those disagreements at least this uneven is
when the two models are equally accurate (a two-sided binomial test with p = 1/2).

Outputs (compare.json, disagreements.csv, disagreements.png) go to --out, else to
MODEL_B's registry folder, compare/<MODEL_A name>-<version>/.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from imgclf import registry
from imgclf.config import (COMPARE_DIR, COMPARE_FILE, COMPARE_FILES, DEFAULT_BACKEND, GATE_MIN_ACCURACY_DELTA,
                           PICTURE_IMAGES)
from imgclf.errors import DataError, GateRefused, ImgclfError, UsageError

OUTPUT_FILES = COMPARE_FILES


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for the discordant counts (scipy's binomtest when available)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    try:
        from scipy.stats import binomtest
    except ImportError:  # scipy comes with scikit-learn, but the sum is short
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return float(min(1.0, binomtest(k, n, 0.5).pvalue))


def default_out(ref_a: registry.ModelRef, ref_b: registry.ModelRef) -> Path:
    if ref_b.onnx_only:
        raise UsageError(f"{ref_b.onnx_path}: a standalone .onnx file has no registry folder; give --out DIR")
    m = ref_a.metadata
    name = registry.safe_name(f"{m.get('name', ref_a.path.name)}-{m.get('version', '')}".rstrip("-"))
    return ref_b.path / COMPARE_DIR / name


def _classify(clf, ds, reporter):
    """Decode the scanned images with the model's own spec; (decoded, calibrated probabilities)."""
    from imgclf.data.pipeline import decode
    from imgclf.predict import predict_probabilities

    d = decode(ds.paths, ds.labels, clf.spec)
    if reporter:
        for e in d.problems:
            reporter.warn(f"skipped {e.path}: {e.reason}")
    return d, predict_probabilities(clf, np.asarray(d.pixels))


def compare_models(ref_a: registry.ModelRef, ref_b: registry.ModelRef, data, out: Optional[Path] = None,
                   backend: str = DEFAULT_BACKEND, force: bool = False, reporter=None) -> dict:
    """Both models on the same images of DATA (test/ of a split root, else val/, else the tree): the report
    (`--format json`), also written to `out` with the disagreements as CSV and a picture."""
    from imgclf.evaluate import evaluation_folder
    from imgclf.predict import load_classifier

    folder = evaluation_folder(data)
    out = _output_folder(ref_a, ref_b, out, force)
    clf_a, clf_b = load_classifier(ref_a, backend), load_classifier(ref_b, backend)
    names = clf_a.class_names
    if sorted(names) != sorted(clf_b.class_names):
        raise UsageError(f"{ref_a.label} and {ref_b.label} have different classes ({', '.join(names)} vs "
                         f"{', '.join(clf_b.class_names)}); they cannot be compared image by image")
    both = _classify_both(clf_a, clf_b, folder, reporter)
    right_a, right_b = both.pred_a == both.y, both.pred_b == both.y
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
    disagree, disagreements = _disagreements(both, names, right_a, right_b)
    acc_a, acc_b = float(right_a.mean()), float(right_b.mean())
    report = {
        "model_a": ref_a.label, "model_b": ref_b.label, "data": os.path.abspath(folder),
        "backend_a": clf_a.backend, "backend_b": clf_b.backend, "images": len(both.common),
        "skipped": both.skipped,
        "accuracy_a": round(acc_a, 6), "accuracy_b": round(acc_b, 6), "accuracy_delta": round(acc_b - acc_a, 6),
        "both_right": int(np.sum(right_a & right_b)), "both_wrong": int(np.sum(~right_a & ~right_b)),
        "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": round(mcnemar_exact(only_a, only_b), 6),
        "per_class": _per_class(names, both.y, right_a, right_b), "disagreements": disagreements,
    }
    _write_outputs(out, report, both, disagree, f"A = {ref_a.label}, B = {ref_b.label}")
    report["outputs"] = str(out)
    return report


def _output_folder(ref_a: registry.ModelRef, ref_b: registry.ModelRef, out: Optional[Path], force: bool) -> Path:
    """--out (refused when it holds earlier outputs, unless `force`), else B's compare/A/ folder."""
    if out is None:
        return default_out(ref_a, ref_b)
    out = Path(out)
    if not force:
        clash = [f for f in OUTPUT_FILES if (out / f).exists()]
        if clash:
            raise UsageError(f"{out}: would overwrite {', '.join(clash)} (use --force)")
    return out


@dataclass
class _Both:
    """The images both models could read (`common`, in A's order), their labels and both answers."""

    common: List[str]
    y: np.ndarray
    p_a: np.ndarray        # A's probabilities, rows as `common`
    p_b: np.ndarray        # B's, with its columns in A's class order
    pixels: np.ndarray     # the decoded images with the more channels (for the picture)
    row_of: dict           # path -> row of `pixels`
    skipped: int

    @property
    def pred_a(self) -> np.ndarray:
        return self.p_a.argmax(1)

    @property
    def pred_b(self) -> np.ndarray:
        return self.p_b.argmax(1)


def _classify_both(clf_a, clf_b, folder: Path, reporter) -> _Both:
    """Scan the folder in A's class order, decode it with each model's spec (once when they share it) and
    run both; a file one spec cannot decode is left out for both."""
    from imgclf.data.scan import scan

    ds = scan(folder, class_names=clf_a.class_names)
    if reporter:
        for p in ds.problems:
            reporter.warn(f"skipped {p.path}: {p.reason}")
    if not ds.samples:
        raise DataError(f"{folder}: no usable images to compare on")
    d_a, p_a = _classify(clf_a, ds, reporter)
    if clf_b.spec == clf_a.spec:
        from imgclf.predict import predict_probabilities
        d_b, p_b = d_a, predict_probabilities(clf_b, np.asarray(d_a.pixels))
    else:
        d_b, p_b = _classify(clf_b, ds, None)
    common = sorted(set(d_a.paths) & set(d_b.paths), key={p: i for i, p in enumerate(d_a.paths)}.get)
    if not common:
        raise DataError(f"{folder}: no decodable images to compare on")
    ia = {p: i for i, p in enumerate(d_a.paths)}
    ib = {p: i for i, p in enumerate(d_b.paths)}
    rows_a, rows_b = [ia[p] for p in common], [ib[p] for p in common]
    pixels, row_of = (d_a.pixels, ia) if clf_a.spec.channels >= clf_b.spec.channels else (d_b.pixels, ib)
    return _Both(common=common, y=np.asarray(d_a.labels)[rows_a], p_a=p_a[rows_a],
                 p_b=p_b[rows_b][:, [clf_b.class_names.index(c) for c in clf_a.class_names]],
                 pixels=pixels, row_of=row_of, skipped=len(ds.problems) + len(ds.samples) - len(common))


def _per_class(names, y: np.ndarray, right_a: np.ndarray, right_b: np.ndarray) -> List[dict]:
    per_class = []
    for k, c in enumerate(names):
        m = y == k
        ra = float(right_a[m].mean()) if m.any() else None
        rb = float(right_b[m].mean()) if m.any() else None
        per_class.append({"class": c, "support": int(m.sum()),
                          "recall_a": None if ra is None else round(ra, 6),
                          "recall_b": None if rb is None else round(rb, 6),
                          "delta": None if ra is None else round(rb - ra, 6)})
    return per_class


def _disagreements(both: _Both, names, right_a: np.ndarray, right_b: np.ndarray):
    """(Indices into `both.common`, rows) of the images only one model gets right: the ones B breaks first
    (A right, B wrong), then the ones it fixes; the most confident mistakes first in each."""
    pred_a, pred_b, y = both.pred_a, both.pred_b, both.y
    conf_a, conf_b = both.p_a.max(1), both.p_b.max(1)
    disagree = np.flatnonzero(right_a != right_b)
    wrong_conf = np.where(right_a[disagree], conf_b[disagree], conf_a[disagree])
    disagree = disagree[np.lexsort((-wrong_conf, ~right_a[disagree]))]
    rows = [{"path": both.common[i], "true": names[y[i]], "pred_a": names[pred_a[i]], "pred_b": names[pred_b[i]],
             "conf_a": round(float(conf_a[i]), 6), "conf_b": round(float(conf_b[i]), 6)} for i in disagree]
    return disagree, rows


def _write_outputs(out: Path, report: dict, both: _Both, disagree: np.ndarray, heading: str) -> None:
    """compare.json, disagreements.csv and disagreements.png in `out`."""
    from imgclf.plots import disagreements_png

    disagreements, only_a, only_b = report["disagreements"], report["only_a_right"], report["only_b_right"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / COMPARE_FILE, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(out / "disagreements.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "true", "pred_a", "pred_b", "conf_a", "conf_b"])
        w.writeheader()
        w.writerows(disagreements)
    # the picture: both kinds, the first of each (at most PICTURE_IMAGES in all, at least about half for
    # the bigger group)
    k_a = min(only_a, max(PICTURE_IMAGES - only_b, -(-PICTURE_IMAGES // 2)))
    shown = list(range(k_a)) + list(range(only_a, only_a + min(only_b, PICTURE_IMAGES - k_a)))
    disagreements_png(out / "disagreements.png", [disagreements[j] for j in shown],
                      [both.pixels[both.row_of[both.common[disagree[j]]]] for j in shown],
                      f"{heading}: {only_a} only A right, {only_b} only B right"
                      + (f" ({len(shown)} shown)" if len(disagree) > len(shown) else ""))


# ----------------------------------------------------------------------------------------------- gate


def gated_tag(registry_dir, model: str, alias: str, data, max_regressions: Optional[int] = None,
              min_accuracy_delta: float = GATE_MIN_ACCURACY_DELTA, backend: str = DEFAULT_BACKEND,
              reporter=None) -> dict:
    """Move TAG to MODEL only when, on DATA, MODEL breaks at most `max_regressions` images that the version
    holding TAG gets right and is at most `min_accuracy_delta` less accurate. Raises GateRefused (TAG
    untouched) otherwise. A TAG held by no version passes. Returns {"tagged", "current", "compare"}."""
    if max_regressions is not None and max_regressions < 0:
        raise UsageError(f"--max-regressions must be 0 or more, got {max_regressions}")
    if not (-1.0 <= min_accuracy_delta <= 1.0):
        raise UsageError(f"--min-accuracy-delta must be between -1 and 1, got {min_accuracy_delta}")
    registry.check_tag(alias)
    candidate = registry.resolve(registry_dir, model)
    if candidate.onnx_only:
        raise UsageError(f"{model}: only registry models can be tagged")
    name = candidate.metadata["name"]
    try:
        current = registry.resolve(registry_dir, f"{name}:{alias}")
    except ImgclfError:
        current = None
    if current is None or current.metadata.get("version") == candidate.metadata.get("version"):
        why = "not held yet" if current is None else "already held by this version"
        if reporter:
            reporter.info(f"gate: {name}:{alias} is {why}; the gate passes")
        ref = registry.set_tag(registry_dir, model, alias,
                               expect_version=None if current is None else current.metadata["version"])
        return {"tagged": ref.label, "current": None if current is None else current.label, "compare": None}
    report = compare_models(current, candidate, data, backend=backend, reporter=reporter)
    regressions, delta = report["only_a_right"], report["accuracy_delta"]
    path = Path(report["outputs"]) / COMPARE_FILE
    reasons = []
    if max_regressions is not None and regressions > max_regressions:
        reasons.append(f"it breaks {regressions} images that {current.label} gets right (at most "
                       f"{max_regressions} allowed)")
    if delta < -min_accuracy_delta - 1e-9:
        reasons.append(f"accuracy {report['accuracy_a']:.4f} -> {report['accuracy_b']:.4f} ({delta:+.4f}; allowed "
                       f"down to {0.0 - min_accuracy_delta:+.4f})")
    if reasons:
        raise GateRefused(f"{candidate.label} not tagged {alias} (held by {current.label}): {'; '.join(reasons)}; "
                          f"report: {path}")
    if reporter:
        reporter.info(f"gate passed on {report['images']} images of {report['data']}: accuracy "
                      f"{report['accuracy_a']:.4f} -> {report['accuracy_b']:.4f}, breaks {regressions}, fixes "
                      f"{report['only_b_right']} (McNemar p {report['mcnemar_p']:.3g}); report: {path}")
    ref = registry.set_tag(registry_dir, model, alias, expect_version=current.metadata["version"])
    return {"tagged": ref.label, "current": current.label, "compare": report}
