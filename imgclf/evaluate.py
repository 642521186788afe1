"""`imgclf evaluate`: accuracy, per-class precision/recall/F1, the confusion matrix and the misclassified
images, as files (CSV, PNG, JSON) and as one report."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from imgclf import registry
from imgclf.config import (DEFAULT_BACKEND, EVALUATION_DIR, EVALUATION_FILES, METRICS_FILE, PICTURE_IMAGES,
                           REPORT_FILE, REPORT_IMAGES)
from imgclf.data.pipeline import decode
from imgclf.data.scan import find_split_dirs, scan
from imgclf.errors import DataError, UsageError
from imgclf.predict import load_classifier, predict_probabilities

OUTPUT_FILES = EVALUATION_FILES


def evaluation_folder(data) -> Path:
    """A split root is evaluated on test/ (else val/); any other folder as a class-folder tree."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    dirs = find_split_dirs(root)
    if dirs:
        return dirs.get("test") or dirs["val"]
    return root


def evaluate(ref: registry.ModelRef, data, out: Optional[Path] = None, backend: str = DEFAULT_BACKEND,
             force: bool = False, reporter=None, html: bool = True, report_images: int = REPORT_IMAGES,
             target_accuracy: Optional[float] = None, tta: bool = False) -> dict:
    """Run the model on DATA (test/ of a split root, else val/, else the tree), write OUTPUT_FILES to `out`
    (default: the model's evaluation/ folder; an existing --out is overwritten only with `force`) and
    record the headline figures in the model's metadata; with `html`, also report.html (imgclf/report.py,
    `report_images` thumbnails). Returns the report (`--format json`).
    Every figure uses the calibrated probabilities; the calibration ones also the uncalibrated (T = 1)."""
    from imgclf.calibration import check_probability, evaluation_report
    from imgclf.plots import reliability_png, risk_coverage_png

    if report_images < 0:
        raise UsageError(f"--report-images must be 0 or more, got {report_images}")
    check_probability("target-accuracy", target_accuracy)
    folder = evaluation_folder(data)
    user_out = out is not None
    out = Path(out) if out else (ref.path / EVALUATION_DIR)
    if user_out and not force:
        clash = [f for f in OUTPUT_FILES + ((REPORT_FILE,) if html else ()) if (out / f).exists()]
        if clash:
            raise UsageError(f"{out}: would overwrite {', '.join(clash)} (use --force)")
    clf = load_classifier(ref, backend, tta=tta)
    d, problems = _decode_folder(folder, clf, reporter)
    seen = training_images_seen(ref, d.paths)
    if seen and reporter:
        reporter.warn(seen)
    raw = predict_probabilities(clf, np.asarray(d.pixels), calibrated=False)
    confidence_report, probs = evaluation_report(raw, d.labels, clf.temperature, target_accuracy)
    scores, wrong = score(d.labels, probs, clf.class_names, d.paths)
    report = {"model": ref.label, "data": os.path.abspath(folder), "backend": clf.backend,
              "images": int(len(d.labels)), "skipped": len(problems), "tta": bool(tta)} | scores
    report = {k: v for k, v in report.items() if k != "misclassified"} | confidence_report | \
        {"misclassified": report["misclassified"]}
    write_outputs(out, report, [d.pixels[i] for i in wrong[:PICTURE_IMAGES]])
    reliability_png(out / "reliability.png", report["reliability"], report["calibration"])
    risk_coverage_png(out / "risk_coverage.png", probs, d.labels, report["risk_coverage"],
                      report.get("target_accuracy"))
    report["outputs"] = str(out)
    if not ref.onnx_only:
        registry.update_metadata(ref, evaluation={"data": report["data"], "accuracy": report["accuracy"],
                                                  "macro_f1": report["macro_f1"], "images": report["images"],
                                                  "ece": report["calibration"]["ece"], "outputs": str(out)})
    if html:
        from imgclf.report import write_report
        report["report_html"] = str(write_report(
            out, report, paths=d.paths, true=d.labels, pred=probs.argmax(axis=1), confidence=probs.max(axis=1),
            metadata=ref.metadata, model_dir=None if ref.onnx_only else ref.path, problems=problems,
            max_images=report_images))
    return report


def training_images_seen(ref: registry.ModelRef, paths) -> Optional[str]:
    """The warning when the images being evaluated are (some of) the model's own training images, from
    what metadata.json records: the folder training read them from (dataset.train.root), and the
    fingerprint (names and sizes) of every image training used (a copy of that folder elsewhere). None
    when neither matches (or the model records neither)."""
    from imgclf.data.files import fingerprint

    ds = ref.metadata.get("dataset") or {}
    train_root = (ds.get("train") or {}).get("root")
    advice = ("its accuracy on them overstates how it does on new images; evaluate on images it did not train "
              "on (a split root's test/, from `imgclf split`)")
    if train_root and os.path.isdir(train_root):
        root = os.path.realpath(train_root)
        inside = sum(os.path.realpath(p).startswith(root + os.sep) for p in paths)
        if inside:
            held = " (with the validation images held out of it)" if ds.get("val_held_out") else ""
            return (f"{inside} of the {len(paths)} images are in {train_root}, the folder {ref.label} was "
                    f"trained on{held}: {advice}")
    if ds.get("fingerprint") and fingerprint(paths) == ds["fingerprint"]:
        return (f"these {len(paths)} images have the names and sizes of the images {ref.label} was trained on "
                f"(the dataset fingerprint in its metadata.json): {advice}")
    return None


def _decode_folder(folder: Path, clf, reporter):
    """(Decoded pixels of the folder's usable images, labels in the model's class order; the files skipped,
    each with .path and .reason)."""
    ds = scan(folder, class_names=clf.class_names)
    if reporter:
        for p in ds.problems:
            reporter.warn(f"skipped {p.path}: {p.reason}")
    if not ds.samples:
        raise DataError(f"{folder}: no usable images to evaluate")
    if reporter:
        with reporter.progress("decoding", total=len(ds.samples)) as advance:
            d = decode(ds.paths, ds.labels, clf.spec, progress=advance)
        for e in d.problems:
            reporter.warn(f"skipped {e.path}: {e.reason}")
    else:
        d = decode(ds.paths, ds.labels, clf.spec)
    if not len(d.labels):
        raise DataError(f"{folder}: no decodable images to evaluate")
    return d, list(ds.problems) + list(d.problems)


def score(y: np.ndarray, probs: np.ndarray, class_names, paths) -> Tuple[dict, np.ndarray]:
    """(Accuracy, macro F1, per-class precision/recall/F1, the confusion matrix (rows: true) and the
    misclassified images, most confident mistakes first; the indices of those images, in that order)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = probs.argmax(axis=1)
    k = len(class_names)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=list(range(k)),
                                                                     zero_division=0)
    per_class = [{"class": class_names[i], "precision": round(float(precision[i]), 6),
                  "recall": round(float(recall[i]), 6), "f1": round(float(f1[i]), 6), "support": int(support[i])}
                 for i in range(k)]
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    misclassified = [{"path": paths[i], "true": class_names[y[i]], "predicted": class_names[pred[i]],
                      "confidence": round(float(probs[i, pred[i]]), 6)} for i in wrong]
    return {"accuracy": round(float((pred == y).mean()), 6), "macro_f1": round(float(np.mean(f1)), 6),
            "class_names": list(class_names), "per_class": per_class, "confusion_matrix": cm.tolist(),
            "misclassified": misclassified}, wrong


def write_outputs(out: Path, report: dict, worst_pixels) -> None:
    """metrics.json, confusion_matrix.csv/.png, misclassified.csv/.png (`worst_pixels`: the images of
    the first misclassified rows, for the picture)."""
    from imgclf.plots import confusion_matrix_png, misclassified_png

    class_names, misclassified = report["class_names"], report["misclassified"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / METRICS_FILE, "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in report.items() if k != "misclassified"} |
                  {"misclassified_count": len(misclassified)}, f, indent=2)
    with open(out / "confusion_matrix.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted"] + class_names)
        for name, row in zip(class_names, report["confusion_matrix"]):
            w.writerow([name] + [int(v) for v in row])
    with open(out / "misclassified.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "true", "predicted", "confidence"])
        w.writeheader()
        w.writerows(misclassified)
    confusion_matrix_png(out / "confusion_matrix.png", class_names, np.asarray(report["confusion_matrix"]))
    misclassified_png(out / "misclassified.png", misclassified, worst_pixels)
