"""report.html (imgclf evaluate), curves.png (imgclf train) and MODEL_CARD.md (imgclf models card), read as
files; tests/test_report_browser.py opens the report in a real browser."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, cli, error_line, noisy, planted_eval_tree

CLASSES = ["blue", "green", "red"]
EVIL = "<img src=x onerror=alert(1)>"


class Page(HTMLParser):
    """The tags (with attributes) and the text of an HTML document."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.chunks, self._skip = [], [], 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.chunks).split())

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def ids(self):
        return {a["id"] for _, a in self.tags if "id" in a}


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    root = planted_eval_tree(tmp_path_factory.mktemp("report") / "eval")
    (root / "blue" / "broken.png").write_bytes(b"not a png at all")
    return root


def evaluate(registry, data, out, *extra):
    r = cli("evaluate", "colours", data, "--registry", registry, "--out", out, *extra)
    assert r.exit_code == 0, r.output
    return r


def evaluate_json(registry, data, out, *extra):
    return json.loads(evaluate(registry, data, out, "--format", "json", *extra).stdout)


def thumbnails_in(page: Page):
    return [a for a in page.find("img") if "th" in a.get("class", "").split()]


# ------------------------------------------------------------------------------------------ report.html

def test_evaluate_writes_a_self_contained_report_and_prints_its_path(registry_copy, eval_data, tmp_path):
    out = tmp_path / "out"
    r = evaluate(registry_copy, eval_data, out)
    html_path = out / "report.html"
    assert f"report: {html_path}" in r.stdout.splitlines()
    text = html_path.read_text(encoding="utf-8")
    page = Page(text)
    report = json.loads((out / "metrics.json").read_text())
    # the header: model, version, data folder, image count
    assert "Evaluation of colours:1" in page.text and str(eval_data) in page.text and "18 images" in page.text
    assert f"{100 * report['accuracy']:.1f}%" in page.text
    assert {"per-class", "confusion", "mistakes", "training", "data", "skipped"} <= page.ids()
    # one row per class, one button per matrix cell carrying its count
    cells = page.find("button")
    assert len(cells) == 9
    for a in cells:
        i, j = int(a["data-r"]), int(a["data-c"])
        assert a["title"].endswith(f": {report['confusion_matrix'][i][j]}")
    # self-contained: a strict CSP, every picture a data URI, no link or script out of the file
    csp = page.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    assert "default-src 'none'" in csp and "img-src data:" in csp and "'unsafe-inline'" not in csp
    assert all(a["src"].startswith("data:image/") for a in page.find("img"))
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", text)
    assert not page.find("link") and all("src" not in a for a in page.find("script"))
    # the skipped file and its reason
    assert "broken.png" in page.text and "not an image Pillow can read" in page.text
    # training curves from history.csv
    assert page.find("img", alt="training curves")


def test_mistakes_gallery_most_confident_first_with_labels_and_paths(registry_copy, eval_data, tmp_path):
    report = evaluate_json(registry_copy, eval_data, tmp_path / "out")
    assert report["report_html"] == str(tmp_path / "out" / "report.html")
    text = Path(report["report_html"]).read_text(encoding="utf-8")
    gallery = text.split('id="mistakes"', 1)[1].split("</div></section>", 1)[0]
    figures = re.findall(r'<figure data-path="([^"]+)">(.*?)</figure>', gallery)
    expected = [m["path"].split("eval/", 1)[1] for m in report["misclassified"]]
    assert [p for p, _ in figures] == expected                      # all of them, most confident first
    for (path, body), m in zip(figures, report["misclassified"]):
        assert f'>{m["true"]}</span> → <span class="p">{m["predicted"]}<' in body
        assert f"confidence {m['confidence']:.3f}" in body and "<img " in body


def test_report_images_bounds_the_thumbnails_and_lists_the_rest(registry_copy, eval_data, tmp_path):
    report = evaluate_json(registry_copy, eval_data, tmp_path / "two", "--report-images", 2)
    page = Page(Path(report["report_html"]).read_text(encoding="utf-8"))
    n_wrong = len(report["misclassified"])
    assert n_wrong >= 3
    assert len(thumbnails_in(page)) == 2
    listed = page.text.split(f"{n_wrong - 2} more mistake{'s' if n_wrong > 3 else ''} without a thumbnail", 1)[1]
    for m in report["misclassified"][2:]:
        assert m["path"].split("eval/", 1)[1] in listed
    report = evaluate_json(registry_copy, eval_data, tmp_path / "none", "--report-images", 0)
    page = Page(Path(report["report_html"]).read_text(encoding="utf-8"))
    assert thumbnails_in(page) == [] and f"{n_wrong} more mistakes without a thumbnail" in page.text
    assert all(m["path"].split("eval/", 1)[1] in page.text for m in report["misclassified"])
    # with room to spare, correct images get thumbnails too (in the script's data), from every class
    report = evaluate_json(registry_copy, eval_data, tmp_path / "all", "--report-images", 200)
    text = Path(report["report_html"]).read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="imgclf-data">(.*?)</script>', text,
                                re.S).group(1))
    assert len(data["images"]) == 18 and all(m[4] >= 0 for m in data["images"])
    assert sum(1 for s in data["thumbs"] if s) == 18 - n_wrong      # the mistakes' own come from the gallery


def test_no_html_and_open(registry_copy, eval_data, tmp_path, monkeypatch):
    evaluate(registry_copy, eval_data, tmp_path / "plain", "--no-html")
    assert not (tmp_path / "plain" / "report.html").exists() and (tmp_path / "plain" / "metrics.json").exists()
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    evaluate(registry_copy, eval_data, tmp_path / "o", "--open")
    assert opened == [(tmp_path / "o" / "report.html").resolve().as_uri()]
    line = error_line(cli("evaluate", "colours", eval_data, "--registry", registry_copy, "--out", tmp_path / "x",
                          "--open", "--no-html"))
    assert "--open" in line and "--no-html" in line
    line = error_line(cli("evaluate", "colours", eval_data, "--registry", registry_copy, "--report-images", -1))
    assert "--report-images" in line and "-1" in line


def test_report_html_is_not_overwritten_without_force(registry_copy, eval_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("mine")
    line = error_line(cli("evaluate", "colours", eval_data, "--registry", registry_copy, "--out", out))
    assert "report.html" in line and "--force" in line
    assert (out / "report.html").read_text() == "mine"
    evaluate(registry_copy, eval_data, out, "--no-html")               # not written: nothing to refuse
    assert (out / "report.html").read_text() == "mine"
    evaluate(registry_copy, eval_data, out, "--force")
    assert "Evaluation of colours:1" in (out / "report.html").read_text()


# ------------------------------------------------------------------------- the builder, with made-up data

def _fake(tmp_path, class_names, n_per=3, wrong=()):
    """Real little PNGs and a report dict shaped like evaluate's, for class names of any kind."""
    paths, true, pred, conf = [], [], [], []
    root = tmp_path / "data"
    for c, name in enumerate(class_names):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for k in range(n_per):
            p = d / f"{k}.png"
            noisy("RGB", (12, 12), list(COLOURS.values())[c % 3]).save(p)
            paths.append(str(p))
            true.append(c)
            pred.append(c)
            conf.append(0.9)
    for i, p in wrong:
        pred[i] = p
        conf[i] = 0.7
    k = len(class_names)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(true, pred):
        cm[t, p] += 1
    report = {"model": "m:1", "data": str(root), "backend": "keras", "images": len(paths), "skipped": 0,
              "accuracy": float(np.trace(cm) / cm.sum()), "macro_f1": 0.5, "class_names": class_names,
              "per_class": [{"class": n, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": n_per}
                            for n in class_names],
              "confusion_matrix": cm.tolist(),
              "misclassified": [{"path": paths[i], "true": class_names[true[i]], "predicted": class_names[pred[i]],
                                 "confidence": conf[i]} for i in range(len(paths)) if true[i] != pred[i]]}
    return report, dict(paths=paths, true=true, pred=pred, confidence=conf)


def test_every_string_from_the_data_or_registry_is_escaped(tmp_path):
    from imgclf.report import build_report

    evil = [EVIL, '"><script>alert(2)</script>', "a&b", "</script><b>x"]
    report, images = _fake(tmp_path, evil, wrong=[(0, 1), (4, 2)])
    report["model"] = "<b>m</b>:1"
    report["data"] = str(tmp_path / "data")

    class P:
        path, reason = str(tmp_path / "data" / "<svg onload=alert(3)>.png"), "<i>bad</i> file"

    text = build_report(report, metadata={"name": "<b>m</b>", "version": 1, "arch": "<u>cnn</u>"},
                        problems=[P()], **images)
    for raw in ("<img src=x", "<script>alert", "<svg onload", "<b>m</b>", "<i>bad</i>", "<u>cnn", "</script><b>"):
        assert raw not in text, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "&lt;i&gt;bad&lt;/i&gt; file" in text
    page = Page(text)
    assert EVIL in page.text and "a&b" in page.text and "<b>m</b>" in page.text
    assert len(page.find("script")) == 2                                 # the data block and ours, nothing else
    data = json.loads(re.search(r'id="imgclf-data">(.*?)</script>', text, re.S).group(1))
    assert data["classes"] == evil                                       # intact for the script's textContent


def test_calibration_and_compare_sections_when_present_only(tmp_path):
    from imgclf.report import build_report

    report, images = _fake(tmp_path, ["cat", "dog"], wrong=[(1, 1)])
    plain = Page(build_report(report, **images))
    assert "calibration" not in plain.ids() and "compare" not in plain.ids()
    report["calibration"] = {"temperature": 1.7, "ece": 0.031, "ece_uncalibrated": 0.118, "nll": 0.42,
                             "nll_uncalibrated": 0.61, "brier": 0.2, "brier_uncalibrated": 0.25}
    report["risk_coverage"] = [{"threshold": 0.5, "coverage": 0.9, "accuracy": 0.95},
                               {"threshold": 0.9, "coverage": 0.4, "accuracy": 0.99}]
    compare = {"model_a": "cats:1", "model_b": "cats:2", "accuracy_a": 0.8, "accuracy_b": 0.9,
               "per_class": [{"class": "cat", "recall_a": 0.7, "recall_b": 0.9, "delta": 0.2},
                             {"class": "<dog>", "recall_a": 0.9, "recall_b": 0.8, "delta": -0.1}],
               "only_a_right": 3, "only_b_right": 11, "mcnemar_p": 0.0213,
               "disagreements": [{"path": images["paths"][0], "true": "cat", "pred_a": "dog", "pred_b": "cat",
                                  "conf_a": 0.61, "conf_b": 0.88}]}
    page = Page(build_report(report, compare=compare, **images))
    assert {"calibration", "risk-coverage", "compare", "compare-per-class", "disagreements"} <= page.ids()
    t = page.text
    assert "Temperature 1.700" in t and "0.1180 0.0310 -0.0870" in t
    assert "50.0% 90.0% 95.0%" in t.split("risk-coverage")[0] or "0.500 90.0% 95.0%" in t
    assert "cats:1 vs cats:2" in t and "0.0213" in t and "unlikely to be chance" in t and "<dog>" in t
    assert "+0.200" in t and "-0.100" in t
    assert len(thumbnails_in(page)) >= 2                 # the mistake, and the disagreement's picture


def test_compare_json_in_the_output_folder_gets_its_section(registry_copy, eval_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "compare.json").write_text(json.dumps({
        "model_a": "colours:1", "model_b": "colours:2", "accuracy_a": 0.5, "accuracy_b": 0.75, "per_class": [],
        "only_a_right": 1, "only_b_right": 4, "mcnemar_p": 0.375, "disagreements": []}))
    evaluate(registry_copy, eval_data, out)
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    assert "compare" in page.ids() and "colours:1 vs colours:2" in page.text and "could well be chance" in page.text


def test_many_classes_become_a_list_of_the_largest_confusions(tmp_path):
    from imgclf.report import MAX_MATRIX_CLASSES, build_report

    names = [f"class{i:03d}" for i in range(MAX_MATRIX_CLASSES + 5)]
    report, images = _fake(tmp_path, names, n_per=1, wrong=[(0, 1), (2, 3)])
    page = Page(build_report(report, **images))
    buttons = page.find("button")
    assert sorted((b["data-r"], b["data-c"]) for b in buttons) == [("0", "1"), ("2", "3")]


def test_a_ten_thousand_image_report_stays_small(tmp_path):
    """10,000 images, 30% wrong, 10 classes, 96-px photo-like thumbnails: a few MiB at most."""
    from imgclf.report import build_report

    rng = np.random.default_rng(0)
    files = []
    for k in range(60):
        y, x = np.mgrid[0:240, 0:320]
        base = np.stack([(x * (k + 1)) % 256, (y * 2 + k * 9) % 256, ((x + y) * 3) % 256], -1)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        p = tmp_path / f"photo{k}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        files.append(str(p))
    n, k = 10_000, 10
    true = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.3, rng.integers(0, k, n), true)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (true, pred), 1)
    paths = [f"{files[i % len(files)]}" for i in range(n)]
    report = {"model": "big:1", "data": str(tmp_path), "backend": "onnx", "images": n, "skipped": 0,
              "accuracy": float(np.trace(cm) / n), "macro_f1": 0.7, "class_names": [f"class_{i}" for i in range(k)],
              "per_class": [{"class": f"class_{i}", "precision": 0.7, "recall": 0.7, "f1": 0.7, "support": 1000}
                            for i in range(k)], "confusion_matrix": cm.tolist(),
              "misclassified": [{"path": paths[i], "true": f"class_{true[i]}", "predicted": f"class_{pred[i]}",
                                 "confidence": 0.5} for i in np.flatnonzero(true != pred)]}
    text = build_report(report, paths=paths, true=true, pred=pred, confidence=rng.random(n))
    size = len(text.encode("utf-8"))
    assert size < 3 * 2 ** 20, size
    page = Page(text)
    assert len(thumbnails_in(page)) == 180 and all(max(int(a["width"]), int(a["height"])) <= 96
                                                   for a in thumbnails_in(page))      # the gallery: 90%
    data = json.loads(re.search(r'id="imgclf-data">(.*?)</script>', text, re.S).group(1))
    assert sum(1 for s in data["thumbs"] if s) == 20                                   # 2 correct per class
    assert {m[1] for m in data["images"] if m[4] >= 0 and m[1] == m[2]} == set(range(k))


# ------------------------------------------------------------------------------------------ curves.png

def test_train_writes_curves_png_beside_history(trained):
    png = trained.path / "curves.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 300
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    from imgclf.plots import CURVE_COLOURS
    assert CURVE_COLOURS["train"] in colours and CURVE_COLOURS["val"] in colours      # both curves drawn


def test_curves_mark_the_fine_tune_phase():
    from imgclf.plots import PHASE_FILL, curves_png

    rows = [{"epoch": e, "phase": "head" if e <= 4 else "fine-tune", "loss": 1 / e, "accuracy": 1 - 1 / (e + 1),
             "val_loss": 1.2 / e, "val_accuracy": 1 - 1.2 / (e + 1)} for e in range(1, 9)]
    buf = io.BytesIO()
    curves_png(buf, rows)
    im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    a = np.asarray(im)
    shade = np.all(a == PHASE_FILL["fine-tune"], axis=-1)
    cols = np.flatnonzero(shade.any(axis=0))
    # shaded: the right part of each panel (epochs 5-8), from half an epoch before epoch 5
    left_panel = cols[cols < im.size[0] // 2]
    assert left_panel.size, "no shaded fine-tune epochs"
    x0, pw = 56, 430
    boundary = x0 + pw * (4.5 - 1) / 7
    assert abs(left_panel.min() - boundary) <= 3 and left_panel.max() >= x0 + pw - 3
    only_head = [{**r, "phase": "head"} for r in rows]
    buf = io.BytesIO()
    curves_png(buf, only_head)
    assert not np.all(np.asarray(Image.open(buf).convert("RGB")) == PHASE_FILL["fine-tune"], axis=-1).any()


# ------------------------------------------------------------------------------------------- model card

def test_model_card(registry_copy, eval_data, tmp_path):
    evaluate(registry_copy, eval_data, tmp_path / "out")
    r = cli("models", "card", "colours:1", "--registry", registry_copy)
    assert r.exit_code == 0, r.output
    card_path = registry_copy / "colours" / "1" / "MODEL_CARD.md"
    assert r.stdout.strip() == str(card_path)
    card = card_path.read_text(encoding="utf-8")
    meta = json.loads((registry_copy / "colours" / "1" / "metadata.json").read_text())
    assert card.startswith("---\nlibrary_name: imgclf\npipeline_tag: image-classification\n")
    for heading in ("Model details", "Intended use", "Classes", "Training data", "Training configuration",
                    "Metrics", "Known weak classes", "Files and their checks", "Library versions"):
        assert f"\n## {heading}\n" in card, heading
    assert meta["dataset"]["fingerprint"] in card and meta["dataset"]["source"] in card
    for c in CLASSES:
        assert f"| {c} |" in card
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    worst = min(metrics["per_class"], key=lambda c: c["recall"])
    weak = card.split("## Known weak classes", 1)[1].split("##", 1)[0]
    assert f"| {worst['class']} | {worst['recall']:.3f} |" in weak
    keras_sha = hashlib.sha256((registry_copy / "colours" / "1" / "model.keras").read_bytes()).hexdigest()
    assert keras_sha in card
    assert f"| `keras` | `{meta['library_versions']['keras']}` |" in card
    assert f"{metrics['accuracy']:.4f}" in card.split("## Metrics", 1)[1]
    # kept without --force; --force rewrites; - prints it
    card_path.write_text("edited by hand")
    line = error_line(cli("models", "card", "colours:1", "--registry", registry_copy))
    assert "MODEL_CARD.md" in line and "--force" in line and card_path.read_text() == "edited by hand"
    assert cli("models", "card", "colours", "--registry", registry_copy, "--force").exit_code == 0
    assert "## Metrics" in card_path.read_text()
    r = cli("models", "card", "colours", "--registry", registry_copy, "--out", "-")
    assert r.exit_code == 0 and r.stdout.startswith("---\nlibrary_name: imgclf")
    r = cli("models", "card", "colours", "--registry", registry_copy, "--out", tmp_path)
    assert r.exit_code == 0 and (tmp_path / "MODEL_CARD.md").is_file()


def test_model_card_of_an_exported_model_lists_the_onnx_checks(exported, tmp_path):
    r = cli("models", "card", "colours", "--registry", exported.registry, "--out", tmp_path / "card.md")
    assert r.exit_code == 0, r.output
    card = (tmp_path / "card.md").read_text(encoding="utf-8")
    onnx = exported.metadata["onnx"]
    sha = hashlib.sha256((exported.path / "model.onnx").read_bytes()).hexdigest()
    row = next(l for l in card.splitlines() if l.startswith("| `model.onnx` |"))
    assert sha in row and f"opset {onnx['opset']}" in row and f"{onnx['top1_agreement']:.3f}" in row
    assert "Not evaluated yet" in card
    alone = tmp_path / "alone" / "model.onnx"                        # an exported file on its own
    alone.parent.mkdir()
    shutil.copyfile(exported.path / "model.onnx", alone)
    line = error_line(cli("models", "card", alone, "--registry", exported.registry))
    assert str(alone) in line and "registry models" in line


def test_model_card_escapes_names_from_the_data(registry_copy, tmp_path):
    meta_path = registry_copy / "colours" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["class_names"] = [EVIL, "a|b", "*bold*"]
    meta_path.write_text(json.dumps(meta))
    r = cli("models", "card", "colours", "--registry", registry_copy, "--out", "-")
    assert r.exit_code == 0, r.output
    assert "<img" not in r.stdout and "| &lt;img src=x onerror=alert(1)&gt; |" in r.stdout
    assert "| a\\|b |" in r.stdout and "| \\*bold\\* |" in r.stdout
