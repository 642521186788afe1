"""`imgclf models card MODEL`: MODEL_CARD.md, in the layout model hubs use (YAML front matter, then
model details, intended use, classes, training data, training configuration, metrics per split, known weak
classes, files and their checks, library versions, how to use it).

Everything in it comes from the registry: metadata.json, history.csv, the last evaluation's metrics.json and
the files in the version folder. Strings from the data or the registry are escaped for Markdown (`md`), so a
class named `<img src=x onerror=alert(1)>` or `a|b` shows as written wherever the card is rendered.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from imgclf import registry
from imgclf.config import CARD_FILE, METRICS_FILE
from imgclf.errors import UsageError

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md(value) -> str:
    """Text for a Markdown paragraph or table cell: Markdown punctuation backslash-escaped, HTML made inert."""
    text = "" if value is None else str(value)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\r", " ").replace("\n", " ")


def code(value) -> str:
    """Inline code: a backtick fence longer than any run of backticks inside (pipes still need escaping in
    tables, which GitHub honours inside code spans)."""
    text = ("" if value is None else str(value)).replace("\n", " ").replace("|", "\\|")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _yaml_str(value) -> str:
    return json.dumps("" if value is None else str(value), ensure_ascii=False)  # a JSON string is valid YAML


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """`rows` are already Markdown-escaped."""
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(columns))) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _num(v, digits: int = 4) -> str:
    if v is None or v == "":
        return "–"
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return md(v)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _evaluation_metrics(meta: dict) -> Optional[dict]:
    ev = meta.get("evaluation") or {}
    folder = ev.get("outputs")
    if not folder:
        return None
    try:
        with open(Path(folder) / METRICS_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class _Facts:
    """What the card's sections read, gathered once from the registry."""

    ref: registry.ModelRef
    meta: dict
    name: str
    version: object
    label: str
    classes: List[str]
    spec: dict
    size: str
    channels: object
    cfg: dict
    ds: dict
    metrics: dict
    ev: dict
    ev_metrics: Optional[dict]
    history: List[dict]
    versions: dict

    @classmethod
    def of(cls, ref: registry.ModelRef) -> "_Facts":
        from imgclf.report import _history_rows

        meta = ref.metadata
        name, version = meta.get("name", "?"), meta.get("version", "?")
        spec = meta.get("preprocessing") or {}
        return cls(ref=ref, meta=meta, name=name, version=version, label=f"{name}:{version}",
                   classes=list(meta.get("class_names") or []), spec=spec,
                   size="x".join(str(v) for v in (spec.get("image_size") or meta.get("image_size") or [])),
                   channels=spec.get("channels", meta.get("channels")), cfg=meta.get("config") or {},
                   ds=meta.get("dataset") or {}, metrics=meta.get("metrics") or {}, ev=meta.get("evaluation") or {},
                   ev_metrics=_evaluation_metrics(meta), history=_history_rows(ref.path / registry.HISTORY),
                   versions=meta.get("library_versions") or {})

    @property
    def splits(self) -> List[str]:
        return [s for s in ("train", "val", "test") if isinstance(self.ds.get(s), dict)]


def build_card(ref: registry.ModelRef) -> str:
    """MODEL_CARD.md's text: the sections below, in the order model hubs use."""
    facts = _Facts.of(ref)
    out: List[str] = []
    for section in (_front_matter, _model_details, _intended_use, _classes, _training_data,
                    _training_configuration, _metrics, _weak_classes, _files, _library_versions, _how_to_use):
        out += section(facts)
    return "\n".join(out)


def _front_matter(f: _Facts) -> List[str]:
    """The YAML header model hubs read, the title and the one-paragraph summary."""
    ev, metrics = f.ev, f.metrics
    out = ["---", "library_name: imgclf", "pipeline_tag: image-classification",
           "tags:", "- image-classification", "- imgclf", f"- {_yaml_str(f.meta.get('arch'))}",
           f"model_name: {_yaml_str(f.label)}", "metrics:", "- accuracy"]
    best = ev.get("accuracy", metrics.get("test_accuracy", metrics.get("val_accuracy")))
    if best is not None:
        src = "evaluation" if "accuracy" in ev else ("test split" if "test_accuracy" in metrics else "validation split")
        out += ["model-index:", f"- name: {_yaml_str(f.label)}", "  results:",
                "  - task: {type: image-classification}",
                f"    dataset: {{name: {_yaml_str(ev.get('data') or f.ds.get('source'))}, type: imagefolder}}",
                "    metrics:", f"    - {{type: accuracy, value: {float(best):.4f}, name: {_yaml_str(src)}}}"]
    out += ["---", "", f"# Model card: {md(f.label)}", ""]
    out.append(f"An image classifier made with imgclf: {md(f.meta.get('arch'))}, {len(f.classes)} classes, input "
               f"{md(f.size)} px with {md(f.channels)} channel(s). Trained "
               f"{md(str(f.meta.get('created', ''))[:19])} UTC on {code(f.ds.get('source'))}.")
    return out


def _model_details(f: _Facts) -> List[str]:
    spec = f.spec
    details = [("name", code(f.name)), ("version", md(f.version)), ("architecture", code(f.meta.get("arch"))),
               ("created", md(f.meta.get("created"))),
               ("input", md(f"float32 NHWC raw pixels {spec.get('input_range', [0, 255])}, {f.size}x{f.channels}, "
                            f"resized by stretching ({spec.get('resize', 'bilinear')}); scaling is inside the "
                            "model")),
               ("output", md(f"probabilities over the {len(f.classes)} classes, in the order below")),
               ("tags", md(", ".join(f"{k} -> {v}" for k, v in _tags(f.ref).items()) or "none")),
               ("registry folder", code(f.ref.path))]
    return ["", "## Model details", "", _table(["", ""], [[k, v] for k, v in details])]


def _intended_use(f: _Facts) -> List[str]:
    classes, ds = f.classes, f.ds
    return ["", "## Intended use", "",
            f"Sorting images into one of these {len(classes)} classes: "
            f"{', '.join(md(c) for c in classes[:30])}{', ...' if len(classes) > 30 else ''}. It was trained on "
            f"{code(ds.get('source'))} and is meant for images like those (same kind of subject, camera and "
            f"framing), shown at {md(f.size)} px.",
            "", "Out of scope:", "",
            f"- Images of anything else: the model has no 'none of these' answer and always picks one of its "
            f"{len(classes)} classes; use the confidence (and a threshold checked on your own data) to refuse.",
            "- Decisions about people or anything safety-relevant without checking it on data from where it "
            "will be used: the figures below come from "
            f"{sum((ds.get(s) or {}).get('images', 0) for s in ('train', 'val', 'test'))} images of one "
            "folder."]


def _classes(f: _Facts) -> List[str]:
    splits = f.splits
    per_class_eval = {c["class"]: c for c in (f.ev_metrics or {}).get("per_class", [])}
    cols = ["index", "class"] + [f"{s} images" for s in splits] + (["recall (evaluation)"] if per_class_eval else [])
    rows = []
    for i, c in enumerate(f.classes):
        r = [str(i), md(c)] + [md((f.ds[s].get("per_class") or {}).get(c, 0)) for s in splits]
        if per_class_eval:
            r.append(_num(per_class_eval.get(c, {}).get("recall"), 3))
        rows.append(r)
    return ["", "## Classes", "", _table(cols, rows, right=[0] + list(range(2, len(cols))))]


def _training_data(f: _Facts) -> List[str]:
    ds = f.ds
    facts = [("folder", code(ds.get("source"))), ("fingerprint", code(ds.get("fingerprint"))),
             ("validation", "held out of the training folder (stratified, seeded)" if ds.get("val_held_out")
              else "its own folder" if ds.get("val") else "none"),
             ("skipped files", md(ds.get("skipped", 0)))]
    for s in f.splits:
        facts.append((f"{s} images", f"{md(ds[s].get('images'))} from {code(ds[s].get('root'))}"))
    return ["", "## Training data", "", _table(["", ""], [[k, v] for k, v in facts]),
            "", "The fingerprint is a hash of the file names and sizes of every image used: the same data gives "
                "the same fingerprint."]


def _training_configuration(f: _Facts) -> List[str]:
    cfg = f.cfg
    aug = cfg.get("augment") or {}
    augment = cfg.get("augment_policy") or "none"
    changed = {k: v for k, v in aug.items() if v not in (0, 0.0, False, None, "", "none")}
    if changed:
        augment += " (" + ", ".join(f"{k} {v}" for k, v in changed.items()) + ")"
    conf_rows = [("architecture", f.meta.get("arch")), ("epochs (max)", cfg.get("epochs")),
                 ("fine-tune epochs", cfg.get("fine_tune_epochs")), ("batch size", cfg.get("batch_size")),
                 ("learning rate", cfg.get("lr")), ("early stopping patience", cfg.get("patience")),
                 ("seed", cfg.get("seed")), ("weights", cfg.get("weights")), ("augmentation", augment),
                 ("class weights", cfg.get("class_weight")), ("mixed precision", cfg.get("mixed_precision"))]
    remembered = f.meta.get("memory")
    if remembered:  # imgclf/memory.py
        conf_rows.append(("nearest-neighbour memory", f"{remembered['images']} training images x {remembered['width']}"
                                                      f" features, weight {remembered['weight']:g}, temperature "
                                                      f"{remembered['temperature']:g}"))
    out = ["", "## Training configuration", "",
           _table(["setting", "value"], [[k, code(v)] for k, v in conf_rows if v is not None])]
    return out + _epochs_run(f)


def _epochs_run(f: _Facts) -> List[str]:
    from imgclf.plots import phases_of

    history = f.history
    if not history:
        return []
    prow = []
    for phase, a, b in phases_of(history):
        these = [r for r in history if (r.get("phase") or "train") == phase]
        prow.append([md(phase), f"{a}–{b}", md(these[-1].get("lr")), _num(these[-1].get("loss")),
                     _num(these[-1].get("val_loss"))])
    out = ["", "Epochs run:", "",
           _table(["phase", "epochs", "last learning rate", "last train loss", "last val loss"], prow,
                  right=[2, 3, 4])]
    if (f.ref.path / registry.CURVES).is_file():
        out += ["", f"![training curves]({registry.CURVES})"]
    return out


def _metrics(f: _Facts) -> List[str]:
    ds, metrics, ev = f.ds, f.metrics, f.ev
    mrows = []
    if "last_epoch_train_accuracy" in metrics:
        mrows.append(["train (last epoch, dropout on)", md(ds.get("train", {}).get("images") if ds.get("train")
                                                            else "–"),
                      _num(metrics.get("last_epoch_train_loss")), _num(metrics.get("last_epoch_train_accuracy")), "–"])
    for s in ("val", "test"):
        if f"{s}_accuracy" in metrics:
            mrows.append([f"{s} (best weights)", md((ds.get(s) or {}).get("images", "–")),
                          _num(metrics.get(f"{s}_loss")), _num(metrics.get(f"{s}_accuracy")), "–"])
    if ev:
        mrows.append([f"evaluation of {code(ev.get('data'))}", md(ev.get("images")), "–", _num(ev.get("accuracy")),
                      _num(ev.get("macro_f1"))])
    out = ["", "## Metrics", ""]
    if mrows:
        out.append(_table(["split", "images", "loss", "accuracy", "macro F1"], mrows, right=[1, 2, 3, 4]))
    else:
        out.append("No metrics recorded.")
    if not ev:
        out += ["", f"Not evaluated yet: `imgclf evaluate {f.name}:{f.version} DATA` adds per-class figures here."]
    return out


def _weak_classes(f: _Facts) -> List[str]:
    from imgclf.report import weakest

    out = ["", "## Known weak classes", ""]
    ev_metrics = f.ev_metrics
    if not (ev_metrics and ev_metrics.get("per_class")):
        return out + ["Unknown until the model is evaluated (`imgclf evaluate`)."]
    weak = weakest(ev_metrics["per_class"])
    if not weak:
        return out + ["None: every class had a recall of 1.0 in the last evaluation."]
    cm = ev_metrics.get("confusion_matrix")
    names = ev_metrics.get("class_names") or f.classes
    wrows = []
    for w in weak:
        confused = ""
        if cm and w["class"] in names:
            i = names.index(w["class"])
            others = sorted(((v, j) for j, v in enumerate(cm[i]) if j != i and v), reverse=True)[:2]
            confused = ", ".join(f"{md(names[j])} ({v})" for v, j in others)
        wrows.append([md(w["class"]), _num(w["recall"], 3), _num(w["precision"], 3), md(w["support"]),
                      confused or "–"])
    return out + ["Lowest recall in the last evaluation:",
                  "", _table(["class", "recall", "precision", "images", "mistaken for"], wrows, right=[1, 2, 3])]


#: the files the card lists, with what they are
_CARD_FILES = ((registry.KERAS_FILE, "Keras model"), (registry.ONNX_FILE, "ONNX export"),
               (registry.INT8_ONNX_FILE, "int8 ONNX export"), (registry.METADATA, "metadata"),
               (registry.HISTORY, "per-epoch history"), (registry.CURVES, "training curves"))


def _file_check(f: _Facts, fname: str) -> str:
    """The check a model file passed when it was written ("" when none is recorded)."""
    if fname == registry.ONNX_FILE:
        o = f.meta.get("onnx") or {}
        if o:
            return (f"opset {md(o.get('opset'))}; parity with Keras on {md(o.get('checked_images'))} "
                    f"{md(o.get('check_source'))}: top-1 agreement {_num(o.get('top1_agreement'), 3)}, "
                    f"max abs diff {float(o.get('max_abs_diff') or 0):.2e}")
    if fname == registry.INT8_ONNX_FILE:
        c = (f.meta.get("int8") or {}).get("check") or {}
        if c:
            return (f"vs model.onnx on {md(c.get('images'))} held-out images: accuracy "
                    f"{_num(c.get('fp32_accuracy'), 4)} -> {_num(c.get('int8_accuracy'), 4)}, top-1 agreement "
                    f"{_num(c.get('top1_agreement'), 4)}{'' if c.get('passed') else ' (failed, kept by --force)'}")
    return ""


def _files(f: _Facts) -> List[str]:
    frows = []
    for fname, what in _CARD_FILES:
        p = f.ref.path / fname
        if p.is_file():
            sha = _sha256(p) if fname != registry.METADATA else "changes with each evaluation"
            frows.append([code(fname), what, _size(p.stat().st_size), code(sha) if fname != registry.METADATA
                          else sha, _file_check(f, fname) or "–"])
    out = ["", "## Files and their checks", "", _table(["file", "what", "size", "sha256", "check"], frows, right=[2])]
    if not (f.ref.path / registry.ONNX_FILE).is_file():
        out += ["", f"Not exported to ONNX yet: `imgclf export {f.name}:{f.version}`."]
    return out


def _library_versions(f: _Facts) -> List[str]:
    return ["", "## Library versions", "",
            _table(["library", "version"], [[code(k), code(v)] for k, v in f.versions.items()]) if f.versions
            else "Not recorded."]


def _how_to_use(f: _Facts) -> List[str]:
    name, version = f.name, f.version
    return ["", "## How to use", "", "```bash",
            f"imgclf predict photo.jpg --model {name}:{version}",
            f"imgclf evaluate {name}:{version} DATA_FOLDER",
            f"imgclf export {name}:{version}          # model.onnx, class names and preprocessing inside",
            "```", "",
            f"Made by `imgclf models card {name}:{version}` from the registry; regenerate it after an evaluation "
            "or an export.", ""]


def _tags(ref: registry.ModelRef) -> dict:
    tags = registry.tags(ref.path.parent.parent, ref.metadata.get("name", ""))
    return {k: v for k, v in tags.items() if str(v) == str(ref.metadata.get("version"))}


def write_card(ref: registry.ModelRef, out: Optional[Path] = None, force: bool = False) -> Optional[Path]:
    """Write the card (default: MODEL_CARD.md in the version folder) and return its path; OUT '-' means
    stdout (returns None). An existing file is kept unless `force`."""
    import sys

    if ref.onnx_only:
        raise UsageError(f"{ref.onnx_path}: model cards are made for registry models (NAME[:VERSION]), "
                         "not for a standalone .onnx file")
    text = build_card(ref)
    if out is not None and str(out) == "-":
        sys.stdout.write(text)
        return None
    target = Path(out) if out is not None else ref.path / CARD_FILE
    if target.is_dir():
        target = target / CARD_FILE
    if target.exists() and not force:
        raise UsageError(f"{target}: file exists (use --force to overwrite)")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent}: folder not found")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target
