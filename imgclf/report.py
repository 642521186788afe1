"""report.html: one self-contained page for an evaluation, to open offline or attach to an e-mail.

Everything is inside the file: CSS, a small script (clicking a confusion-matrix cell shows that cell's
images), the pictures as data URIs (thumbnails of at most 96 px, decoded by preprocessing.load_thumbnail).
A Content-Security-Policy allows only that style and that script (by hash) and data: images, so the page
can load nothing from the network. Every string that comes from the data or the registry (class names,
paths, model names, reasons) goes through `esc` (or `_json_for_script` for the script's data): a class
folder named `<img src=x onerror=alert(1)>` shows as text.

Sections: header (model, version, date, data folder, image count), headline metrics, per-class table,
confusion matrix, misclassified gallery (most confident first; beyond `max_images` listed by path),
training curves (history.csv), data (counts, skipped files and reasons), and calibration / comparison
when the evaluation has them (report["calibration"], report["risk_coverage"], OUT/compare.json).
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from imgclf.config import COMPARE_FILE, REPORT_FILE, REPORT_IMAGES

THUMB_PX = 96
DEFAULT_IMAGES = REPORT_IMAGES
#: beyond this many classes the matrix is shown as a list of its largest cells (a 1000x1000 table is no use)
MAX_MATRIX_CLASSES = 60
MAX_CONFUSIONS_LISTED = 300
MAX_COMPARE_THUMBS = 24
WEAK_CLASSES = 3


def esc(value) -> str:
    """Text for HTML (element content and quoted attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _json_for_script(obj) -> str:
    """JSON safe inside <script type="application/json">: no '</script>', '<!--' or '&' sequences."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


# ------------------------------------------------------------------------------------------- pictures

def _data_uri(arr: np.ndarray) -> str:
    """The smaller of PNG and (for colour pictures) JPEG, base64."""
    from PIL import Image

    pic = Image.fromarray(arr[:, :, 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    pic.save(buf, "PNG", optimize=True)
    best, mime = buf.getvalue(), "image/png"
    if arr.shape[-1] == 3 and max(pic.size) >= 32:
        buf = io.BytesIO()
        pic.save(buf, "JPEG", quality=82)
        if len(buf.getvalue()) < len(best):
            best, mime = buf.getvalue(), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(best).decode('ascii')}"


def _png_uri(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}"


def thumbnails(paths: Sequence[str], max_side: int = THUMB_PX) -> List[Optional[dict]]:
    """{"src": data URI, "w", "h"} per path (None for a file that can no longer be decoded), in order."""
    from imgclf.data.files import map_in_order
    from imgclf.errors import ImageError
    from imgclf.preprocessing import load_thumbnail

    def one(path):
        try:
            arr = load_thumbnail(path, max_side)
        except ImageError:
            return None
        return {"src": _data_uri(arr), "w": int(arr.shape[1]), "h": int(arr.shape[0])}

    return map_in_order(one, list(paths))


def _img(thumb: dict, alt: str, ident: Optional[str] = None) -> str:
    small = " px" if max(thumb["w"], thumb["h"]) < 64 else ""  # tiny pictures scaled up stay sharp
    return (f'<img class="th{small}"{f" id={chr(34)}{ident}{chr(34)}" if ident else ""} src="{thumb["src"]}" '
            f'width="{thumb["w"]}" height="{thumb["h"]}" alt="{esc(alt)}">')


# ---------------------------------------------------------------------------------------------- page

CSS = """
:root{--fg:#1d2733;--muted:#5b6878;--line:#dde3ea;--bg:#f5f7fa;--card:#fff;--accent:#1f6fb2;--bad:#b42318;--good:#1a7f37}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#19324d;color:#fff;padding:18px 28px 14px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header .sub{color:#c9d6e4;font-size:13px}
header .sub span{margin-right:18px;white-space:nowrap}
header code{color:#fff}
nav{background:#fff;border-bottom:1px solid var(--line);padding:8px 28px;position:sticky;top:0;z-index:2}
nav a{color:var(--accent);text-decoration:none;margin-right:16px;font-size:13px}
main{max-width:1280px;margin:0 auto;padding:18px 28px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:0 0 18px}
h2{font-size:17px;margin:0 0 12px}
h3{font-size:14px;margin:14px 0 8px}
p.note{color:var(--muted);margin:6px 0}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:130px;background:#fbfcfd}
.card .v{font-size:24px;font-weight:600}
.card .k{color:var(--muted);font-size:12px}
table{border-collapse:collapse}
table.data td,table.data th{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
table.data th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
table.data td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.weak td{background:#fff4f2}
meter{width:90px;height:10px;vertical-align:middle}
.tag{display:inline-block;font-size:11px;border-radius:9px;padding:0 7px;background:#fde8e6;color:var(--bad)}
.tag.good{background:#e6f4ea;color:var(--good)}
.cm-wrap{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.cm-scroll{overflow:auto;max-width:100%}
table.cm{font-size:12px}
table.cm th{font-weight:500;padding:2px 6px;color:var(--fg)}
table.cm th.col{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;vertical-align:bottom;max-height:160px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
table.cm th.row{text-align:right;white-space:nowrap;max-width:220px;overflow:hidden;text-overflow:ellipsis}
table.cm td{padding:1px}
table.cm .axis{color:var(--muted);font-size:11px;font-weight:400}
.cell{width:44px;height:36px;border:1px solid #e4e8ee;border-radius:3px;font:12px system-ui,sans-serif;cursor:pointer;background:#fff;color:var(--fg)}
.cell:disabled{cursor:default;color:#b6bfca}
.cell:not(:disabled):hover{outline:2px solid var(--accent)}
.cell[aria-pressed=true]{outline:3px solid #111;outline-offset:-1px}
__HEAT__
#cell-panel{flex:1;min-width:300px}
#cell-panel h3{margin-top:0}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:124px;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fbfcfd}
figure .frame{width:110px;height:100px;display:flex;align-items:center;justify-content:center;background:#eef1f4;border-radius:4px}
img.th{max-width:96px;max-height:96px}
img.th.px{width:auto;height:auto;min-width:72px;min-height:72px;image-rendering:pixelated;object-fit:contain}
figcaption{font-size:11px;margin-top:4px;line-height:1.3}
figcaption .lbl{font-weight:600;word-break:break-word}
figcaption .t{color:var(--good)}
figcaption .p{color:var(--bad)}
figcaption code{font-size:10px;color:var(--muted)}
details{margin-top:10px}
summary{cursor:pointer;color:var(--accent)}
img.curves{max-width:100%;height:auto;border:1px solid var(--line);border-radius:4px}
ul.paths{margin:6px 0;padding-left:18px;max-height:260px;overflow:auto}
.pos{color:var(--good)}.neg{color:var(--bad)}
footer{color:var(--muted);font-size:12px;text-align:center;margin:10px 0 30px}
"""

SCRIPT = r"""
(function () {
  var D = JSON.parse(document.getElementById("imgclf-data").textContent);
  var panel = document.getElementById("cell-panel");
  if (!panel) { return; }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function src(k) {
    if (k < 0) { return null; }
    if (D.thumbs[k]) { return D.thumbs[k]; }
    var g = document.getElementById("t" + k);
    return g ? g.getAttribute("src") : null;
  }
  function show(r, c, button) {
    var pressed = document.querySelectorAll(".cell[aria-pressed=true]");
    for (var i = 0; i < pressed.length; i++) { pressed[i].setAttribute("aria-pressed", "false"); }
    button.setAttribute("aria-pressed", "true");
    var rows = D.images.filter(function (m) { return m[1] === r && m[2] === c; });
    rows.sort(function (a, b) { return b[3] - a[3]; });
    panel.textContent = "";
    var title = el("h3", null, rows.length + (rows.length === 1 ? " image" : " images") + ": true " +
                   D.classes[r] + ", predicted " + D.classes[c]);
    title.id = "cell-title";
    panel.appendChild(title);
    var gallery = el("div", "gallery");
    gallery.id = "cell-images";
    var listed = [];
    rows.forEach(function (m) {
      var s = src(m[4]);
      if (!s) { listed.push(m); return; }
      var fig = el("figure");
      fig.setAttribute("data-path", m[0]);
      var frame = el("div", "frame");
      var img = el("img", "th" + (D.small[m[4]] ? " px" : ""));
      img.src = s;
      img.alt = m[0];
      frame.appendChild(img);
      fig.appendChild(frame);
      var cap = el("figcaption");
      cap.appendChild(el("div", null, "confidence " + m[3].toFixed(3)));
      cap.appendChild(el("code", null, m[0]));
      fig.appendChild(cap);
      gallery.appendChild(fig);
    });
    panel.appendChild(gallery);
    if (listed.length) {
      panel.appendChild(el("p", "note", listed.length + " more without a thumbnail (--report-images):"));
      var ul = el("ul", "paths");
      ul.id = "cell-paths";
      listed.forEach(function (m) {
        var li = el("li");
        li.setAttribute("data-path", m[0]);
        li.appendChild(el("code", null, m[0]));
        li.appendChild(document.createTextNode(" (" + m[3].toFixed(3) + ")"));
        ul.appendChild(li);
      });
      panel.appendChild(ul);
    }
  }
  var cells = document.querySelectorAll("button[data-r]");
  for (var i = 0; i < cells.length; i++) {
    cells[i].addEventListener("click", function (ev) {
      var b = ev.currentTarget;
      show(parseInt(b.getAttribute("data-r"), 10), parseInt(b.getAttribute("data-c"), 10), b);
    });
  }
})();
"""


def _heat_css() -> str:
    """Ten shades for the diagonal (green) and for mistakes (red), by share of the true class's row."""
    out = []
    for i in range(10):
        f = (i + 1) / 10
        g = (int(255 - 190 * f), int(255 - 95 * f), int(255 - 170 * f))
        r = (int(255 - 35 * f), int(255 - 205 * f), int(255 - 205 * f))
        ink = "#fff" if f > 0.55 else "#1d2733"
        out.append(f".d{i}{{background:rgb{g};color:{ink}}}.o{i}{{background:rgb{r};color:{ink}}}")
    return "\n".join(out)


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def page(title: str, header_html: str, sections: List[tuple], data: dict) -> str:
    """A whole HTML document: `sections` are (anchor id, nav label, inner HTML)."""
    css = CSS.replace("__HEAT__", _heat_css())
    csp = (f"default-src 'none'; img-src data:; style-src 'sha256-{_sha256(css)}'; "
           f"script-src 'sha256-{_sha256(SCRIPT)}'; base-uri 'none'; form-action 'none'")
    nav = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label, _ in sections)
    body = "\n".join(f'<section id="{esc(a)}">{inner}</section>' for a, _, inner in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{esc(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n"
        f"<header>{header_html}</header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
        f"<footer>made by imgclf {esc(_version())} · one self-contained file: nothing is loaded from the network"
        f"</footer>\n"
        f'<script type="application/json" id="imgclf-data">{_json_for_script(data)}</script>\n'
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def _version() -> str:
    try:
        import importlib.metadata as md
        return md.version("imgclf")
    except Exception:  # not installed (a checkout on PYTHONPATH)
        return ""


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (),
           row_classes: Optional[Sequence[str]] = None, ident: str = "") -> str:
    """`rows` hold HTML that is already escaped."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="n">{v}</td>' if i in numeric else f"<td>{v}</td>"
                                          for i, v in enumerate(r)) + "</tr>")
    return (f'<table class="data"{f" id={chr(34)}{ident}{chr(34)}" if ident else ""}><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table>")


# ------------------------------------------------------------------------------------------ sections

def _relpath(path: str, root: str) -> str:
    a = os.path.abspath(path)
    try:
        rel = os.path.relpath(a, root)
    except ValueError:  # another drive (Windows)
        return a
    return a if rel.startswith("..") else rel


def _header(report: dict, meta: dict, when: str) -> str:
    name = meta.get("name") or report.get("model")
    version = meta.get("version")
    title = f"{name}:{version}" if version is not None else str(report.get("model"))
    bits = [f"<span>model <b>{esc(title)}</b> ({esc(meta.get('arch') or 'unknown arch')}, "
            f"{esc(report.get('backend'))})</span>",
            f"<span>evaluated {esc(when)}</span>"]
    if meta.get("created"):
        bits.append(f"<span>trained {esc(str(meta['created'])[:19].replace('T', ' '))} UTC</span>")
    bits.append(f"<span>data <code>{esc(report.get('data'))}</code></span>")
    bits.append(f"<span>{esc(report.get('images'))} images</span>")
    return f"<h1>Evaluation of {esc(title)}</h1><div class=\"sub\">{''.join(bits)}</div>"


def _summary(report: dict, meta: dict, weak: List[dict]) -> str:
    n_wrong = len(report.get("misclassified", []))
    cards = [("accuracy", _pct(report.get("accuracy"))), ("macro F1", _fmt(report.get("macro_f1"))),
             ("images", report.get("images")), ("mistakes", n_wrong), ("skipped files", report.get("skipped", 0)),
             ("classes", len(report.get("class_names", [])))]
    cal = report.get("calibration")
    if isinstance(cal, dict) and cal.get("ece") is not None:
        cards.append(("ECE (calibrated)", _fmt(cal.get("ece"))))
    html_cards = "".join(f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
                         for k, v in cards)
    notes = []
    metrics = meta.get("metrics") or {}
    if metrics.get("val_accuracy") is not None or metrics.get("test_accuracy") is not None:
        notes.append("at training time: " + ", ".join(
            f"{split} accuracy {_pct(metrics[f'{split}_accuracy'])}" for split in ("val", "test")
            if metrics.get(f"{split}_accuracy") is not None))
    if weak:
        notes.append("lowest recall: " + ", ".join(f"<b>{esc(w['class'])}</b> {_pct(w['recall'])}" for w in weak))
    return ("<h2>Summary</h2>" + f'<div class="cards">{html_cards}</div>' +
            "".join(f'<p class="note">{n}</p>' for n in notes))


def weakest(per_class: List[dict], n: int = WEAK_CLASSES) -> List[dict]:
    """The classes with the lowest recall (ties: more support first), among those with images."""
    have = [c for c in per_class if c.get("support", 0) > 0]
    ranked = sorted(have, key=lambda c: (c["recall"], -c["support"], c["class"]))
    return [c for c in ranked[:n] if c["recall"] < 1.0]


def _per_class(report: dict, weak: List[dict]) -> str:
    weak_names = {w["class"] for w in weak}
    rows, classes = [], []
    for c in report.get("per_class", []):
        tag = ' <span class="tag">weak</span>' if c["class"] in weak_names else ""
        rows.append([f"{esc(c['class'])}{tag}", _fmt(c["precision"]),
                     f'<meter min="0" max="1" value="{float(c["recall"]):.4f}"></meter> {_fmt(c["recall"])}',
                     _fmt(c["f1"]), esc(c["support"])])
        classes.append("weak" if c["class"] in weak_names else "")
    return ("<h2>Per class</h2>" + _table(["class", "precision", "recall", "F1", "images"], rows, numeric=(1, 2, 3, 4),
                                          row_classes=classes, ident="per-class") +
            '<p class="note">Recall: the share of a class\'s images that the model got right; precision: the share '
            "of the model's answers for a class that were right.</p>")


def _shade(count: int, row_total: int, diagonal: bool) -> str:
    if count == 0:
        return ""
    f = count / max(1, row_total)
    return f"{'d' if diagonal else 'o'}{min(9, int(f * 10))}"


def _matrix(report: dict) -> str:
    names = report["class_names"]
    cm = np.asarray(report["confusion_matrix"], dtype=np.int64)
    k = len(names)
    totals = cm.sum(axis=1)
    if k <= MAX_MATRIX_CLASSES:
        head = "".join(f'<th class="col" title="{esc(n)}">{esc(n)}</th>' for n in names)
        rows = []
        for i in range(k):
            cells = []
            for j in range(k):
                v = int(cm[i, j])
                label = f"true {names[i]}, predicted {names[j]}: {v}"
                cls = _shade(v, int(totals[i]), i == j)
                cells.append(f'<td><button type="button" class="cell {cls}" data-r="{i}" data-c="{j}" '
                             f'aria-pressed="false" title="{esc(label)}"{" disabled" if v == 0 else ""}>{v}'
                             f"</button></td>")
            rows.append(f'<tr><th class="row" title="{esc(names[i])}">{esc(names[i])}</th>{"".join(cells)}</tr>')
        table = (f'<div class="cm-scroll"><table class="cm" id="confusion"><thead><tr><th class="axis">true ↓ '
                 f"predicted →</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
        hint = "Rows: the true class (folder); columns: the class the model chose. Click a cell to see its images."
    else:
        pairs = [(int(cm[i, j]), i, j) for i in range(k) for j in range(k) if i != j and cm[i, j]]
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        shown = pairs[:MAX_CONFUSIONS_LISTED]
        rows = [[esc(names[i]), esc(names[j]),
                 f'<button type="button" class="cell {_shade(v, int(totals[i]), False)}" data-r="{i}" data-c="{j}" '
                 f'aria-pressed="false">{v}</button>'] for v, i, j in shown]
        table = _table(["true", "predicted", "images"], rows, numeric=(2,), ident="confusion")
        hint = (f"{k} classes: too many for a matrix, so these are its {len(shown)} largest off-diagonal cells "
                f"(of {len(pairs)}; all of them are in confusion_matrix.csv). Click a count to see its images.")
    panel = '<div id="cell-panel"><p class="note">Click a cell of the matrix to see exactly its images here.</p></div>'
    return f'<h2>Confusion matrix</h2><p class="note">{esc(hint)}</p><div class="cm-wrap">{table}{panel}</div>'


def _mistakes(report: dict, mistakes: List[dict], thumbs: Dict[int, dict], root: str) -> str:
    total = len(mistakes)
    if not total:
        return "<h2>Mistakes</h2><p class=\"note\">No misclassified images.</p>"
    figs, rest = [], []
    for m in mistakes:
        t = thumbs.get(m["index"])
        rel = _relpath(m["path"], root)
        if t is None:
            rest.append(m)
            continue
        figs.append(
            f'<figure data-path="{esc(rel)}"><div class="frame">{_img(t, rel, ident="t" + str(m["thumb"]))}</div>'
            f'<figcaption><div class="lbl"><span class="t">{esc(m["true"])}</span> → '
            f'<span class="p">{esc(m["predicted"])}</span></div><div>confidence {m["confidence"]:.3f}</div>'
            f'<code title="{esc(os.path.abspath(m["path"]))}">{esc(rel)}</code></figcaption></figure>')
    out = [f"<h2>Mistakes</h2><p class=\"note\">{total} misclassified image{'s' if total != 1 else ''}, "
           "the most confident mistakes first: true class → predicted class, the model's confidence, the file "
           "(relative to the data folder).</p>"]
    out.append(f'<div class="gallery" id="mistakes">{"".join(figs)}</div>')
    if rest:
        rows = [[f"<code>{esc(_relpath(m['path'], root))}</code>", esc(m["true"]), esc(m["predicted"]),
                 f"{m['confidence']:.3f}"] for m in rest]
        out.append(f"<details><summary>{len(rest)} more mistake{'s' if len(rest) != 1 else ''} without a "
                   f"thumbnail (at most --report-images are inlined)</summary>"
                   + _table(["file", "true", "predicted", "confidence"], rows, numeric=(3,), ident="more-mistakes")
                   + "</details>")
    return "".join(out)


def _history_rows(path: Path) -> List[dict]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [r for r in csv.DictReader(f) if r.get("epoch")]
    except (OSError, ValueError, csv.Error):
        return []


def _training(meta: dict, history: List[dict]) -> str:
    if not history:
        return ("<h2>Training</h2><p class=\"note\">No training history: this model has no history.csv "
                "(an ONNX file on its own, or an older model).</p>")
    from imgclf.plots import curves_png, phases_of

    buf = io.BytesIO()
    curves_png(buf, history, title="loss and accuracy per epoch")
    parts = [f'<h2>Training</h2><img class="curves" src="{_png_uri(buf.getvalue())}" width="1024" height="356" '
             f'alt="training curves">']
    rows = []
    for phase, a, b in phases_of(history):
        these = [r for r in history if (r.get("phase") or "train") == phase]
        vals = [float(r["val_accuracy"]) for r in these if r.get("val_accuracy")]
        rows.append([esc(phase), f"{a}–{b}", esc(len(these)), esc(these[-1].get("lr", "")),
                     _fmt(max(vals)) if vals else "–"])
    parts.append(_table(["phase", "epochs", "count", "last learning rate", "best val accuracy"], rows,
                        numeric=(2, 3, 4)))
    cfg = meta.get("config") or {}
    facts = [("architecture", meta.get("arch")), ("input", "x".join(map(str, meta.get("image_size") or [])) +
                                                   f" px, {meta.get('channels')} channel(s)"),
             ("epochs (max)", cfg.get("epochs")), ("fine-tune epochs", cfg.get("fine_tune_epochs")),
             ("batch size", cfg.get("batch_size")), ("learning rate", cfg.get("lr")), ("seed", cfg.get("seed")),
             ("augmentation", cfg.get("augment_policy")), ("weights", cfg.get("weights"))]
    facts = [(k, v) for k, v in facts if v not in (None, "", [])]
    parts.append("<h3>Configuration</h3>" + _table(["setting", "value"], [[esc(k), esc(v)] for k, v in facts]))
    return "".join(parts)


def _data_section(report: dict, meta: dict, problems: Sequence, root: str) -> str:
    names = report["class_names"]
    cm = np.asarray(report["confusion_matrix"], dtype=np.int64)
    out = ["<h2>Data</h2>", f"<p>Evaluated on <code>{esc(report.get('data'))}</code>: {esc(report.get('images'))} "
           f"images in {len(names)} classes; {esc(report.get('skipped', 0))} file(s) skipped.</p>"]
    ds = meta.get("dataset") or {}
    splits = {s: ds.get(s) for s in ("train", "val", "test") if isinstance(ds.get(s), dict)}
    columns = ["class", "evaluated"] + [f"{s} (training run)" for s in splits]
    rows = []
    for i, n in enumerate(names):
        rows.append([esc(n), esc(int(cm[i].sum()))] +
                    [esc((splits[s].get("per_class") or {}).get(n, "–")) for s in splits])
    out.append(_table(columns, rows, numeric=tuple(range(1, len(columns))), ident="data-counts"))
    if ds:
        facts = [("training data", ds.get("source")), ("fingerprint", ds.get("fingerprint")),
                 ("validation", "held out of the training folder" if ds.get("val_held_out") else "its own folder"),
                 ("skipped at training", ds.get("skipped"))]
        out.append("<h3>Training data</h3>" + _table(["", ""], [[esc(k), f"<code>{esc(v)}</code>"]
                                                             for k, v in facts if v is not None]))
    if problems:
        rows = [[f"<code>{esc(_relpath(p.path, root))}</code>", esc(p.reason)] for p in problems]
        out.append(f"<h3>Skipped files ({len(problems)})</h3>" + _table(["file", "reason"], rows, ident="skipped"))
    else:
        out.append('<p class="note">No file was skipped.</p>')
    return "".join(out)


def _calibration(report: dict) -> Optional[str]:
    cal, rc = report.get("calibration"), report.get("risk_coverage")
    if not isinstance(cal, dict) and not rc:
        return None
    out = ["<h2>Calibration</h2>"]
    if isinstance(cal, dict):
        if cal.get("temperature") is not None:
            out.append(f"<p>Temperature <b>{_fmt(cal.get('temperature'))}</b>: probabilities are divided by it "
                       f"(in logit space) before they are reported.</p>")
        rows = []
        for key, label in (("ece", "expected calibration error (ECE)"), ("nll", "negative log-likelihood"),
                           ("brier", "Brier score")):
            if cal.get(key) is None and cal.get(f"{key}_uncalibrated") is None:
                continue
            before, after = cal.get(f"{key}_uncalibrated"), cal.get(key)
            delta = ""
            if isinstance(before, (int, float)) and isinstance(after, (int, float)):
                d = after - before
                delta = f'<span class="{"pos" if d <= 0 else "neg"}">{d:+.4f}</span>'
            rows.append([esc(label), _fmt(before, 4), _fmt(after, 4), delta])
        out.append(_table(["metric (lower is better)", "uncalibrated", "calibrated", "change"], rows,
                          numeric=(1, 2, 3), ident="calibration"))
    if rc:
        rows = [[_fmt(r.get("threshold")), _pct(r.get("coverage")), _pct(r.get("accuracy"))] for r in rc]
        out.append("<h3>Risk and coverage</h3><p class=\"note\">Answering only when the confidence reaches the "
                   "threshold: the share of images answered (coverage) and the accuracy on those.</p>"
                   + _table(["confidence threshold", "coverage", "accuracy"], rows, numeric=(0, 1, 2),
                            ident="risk-coverage"))
    return "".join(out)


def _compare(compare: dict, compare_thumbs: Dict[int, dict]) -> str:
    a, b = compare.get("model_a"), compare.get("model_b")
    out = [f"<h2>Comparison: {esc(a)} vs {esc(b)}</h2>"]
    cards = [(f"accuracy {a}", _pct(compare.get("accuracy_a"))), (f"accuracy {b}", _pct(compare.get("accuracy_b"))),
             (f"only {a} right", compare.get("only_a_right")), (f"only {b} right", compare.get("only_b_right")),
             ("McNemar p", _fmt(compare.get("mcnemar_p"), 4))]
    out.append('<div class="cards">' + "".join(f'<div class="card"><div class="v">{esc(v)}</div><div class="k">'
                                               f'{esc(k)}</div></div>' for k, v in cards) + "</div>")
    p = compare.get("mcnemar_p")
    if isinstance(p, (int, float)):
        verdict = ("the difference is unlikely to be chance (p < 0.05)" if p < 0.05 else
                   "the difference could well be chance (p ≥ 0.05)")
        out.append(f'<p class="note">McNemar\'s test on the images where exactly one model is right: {verdict}.</p>')
    per_class = compare.get("per_class") or []
    if per_class:
        rows = []
        for r in per_class:
            d = r.get("delta")
            cls = "" if not isinstance(d, (int, float)) or d == 0 else ("pos" if d > 0 else "neg")
            rows.append([esc(r.get("class")), _fmt(r.get("recall_a")), _fmt(r.get("recall_b")),
                         f'<span class="{cls}">{esc(f"{d:+.3f}" if isinstance(d, (int, float)) else d)}</span>'])
        out.append("<h3>Recall per class</h3>" + _table(["class", f"recall {a}", f"recall {b}", "change (b − a)"],
                                                         rows, numeric=(1, 2, 3), ident="compare-per-class"))
    dis = compare.get("disagreements") or []
    if dis:
        rows = []
        for k, r in enumerate(dis):
            t = compare_thumbs.get(k)
            pic = f'<div class="frame">{_img(t, str(r.get("path")))}</div>' if t else ""
            rows.append([pic, f"<code>{esc(r.get('path'))}</code>", esc(r.get("true")),
                         f"{esc(r.get('pred_a'))} ({_fmt(r.get('conf_a'))})",
                         f"{esc(r.get('pred_b'))} ({_fmt(r.get('conf_b'))})"])
        out.append(f"<h3>Disagreements ({len(dis)})</h3>" + _table(["", "file", "true", a, b], rows,
                                                                   ident="disagreements"))
    return "".join(out)


# ------------------------------------------------------------------------------------------- builder

def pick_thumbnails(true: np.ndarray, pred: np.ndarray, order_wrong: np.ndarray, budget: int) -> List[int]:
    """Which images get a thumbnail: the mistakes in the given order (most confident first), then, while the
    budget lasts, correct images taken in turn from each class, so every cell has pictures. A tenth of the
    budget is kept for correct images even when there are more mistakes than thumbnails: what a class
    looks like when the model gets it right is part of reading its mistakes."""
    n_correct = int(np.sum(true == pred))
    chosen = [int(i) for i in order_wrong[:budget - min(budget // 10, n_correct)]]
    left = budget - len(chosen)
    if left > 0:
        per_class = [list(np.flatnonzero((true == c) & (pred == c))) for c in range(int(true.max(initial=-1)) + 1)]
        turn = 0
        while left > 0 and any(per_class):
            queue = per_class[turn % len(per_class)]
            if queue:
                chosen.append(int(queue.pop(0)))
                left -= 1
            turn += 1
    return chosen


def build_report(report: dict, *, paths: Sequence[str], true: Sequence[int], pred: Sequence[int],
                 confidence: Sequence[float], metadata: Optional[dict] = None, history: Sequence[dict] = (),
                 problems: Sequence = (), compare: Optional[dict] = None,
                 max_images: int = DEFAULT_IMAGES, when: Optional[str] = None) -> str:
    """The HTML text. `report` is evaluate's report; paths/true/pred/confidence describe every evaluated
    image (confidence: the probability of the predicted class); problems have .path and .reason."""
    meta = metadata or {}
    root = str(report.get("data") or "")
    true_a, pred_a = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    conf_a = np.asarray(confidence, dtype=np.float64)
    wrong = np.flatnonzero(true_a != pred_a)
    wrong = wrong[np.argsort(-conf_a[wrong], kind="stable")]
    chosen = pick_thumbnails(true_a, pred_a, wrong, max(0, int(max_images)))
    decoded = thumbnails([paths[i] for i in chosen])
    wrong_set = set(int(i) for i in wrong)
    thumb_of: Dict[int, int] = {}     # image index -> thumbnail number
    thumbs: List[dict] = []
    script_thumbs: List[Optional[str]] = []   # by thumbnail number; None: the script takes it from the gallery
    for i, t in zip(chosen, decoded):
        if t is not None:
            thumb_of[i] = len(thumbs)
            thumbs.append(t)
            script_thumbs.append(None if i in wrong_set else t["src"])
    names = report["class_names"]
    mistakes = [{"index": int(i), "path": paths[i], "true": names[true_a[i]], "predicted": names[pred_a[i]],
                 "confidence": float(conf_a[i]), "thumb": thumb_of.get(int(i), -1)} for i in wrong]
    data = {
        "classes": names,
        # [path relative to the data folder, true, predicted, confidence, thumbnail number or -1]
        "images": [[_relpath(paths[i], root), int(true_a[i]), int(pred_a[i]), round(float(conf_a[i]), 4),
                    thumb_of.get(i, -1)] for i in range(len(paths))],
        # the mistakes' pictures are in the gallery already (the script takes them from there: id t<N>)
        "thumbs": script_thumbs,
        "small": [max(t["w"], t["h"]) < 64 for t in thumbs],
    }
    when = when or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    weak = weakest(report.get("per_class", []))
    sections = [("summary", "Summary", _summary(report, meta, weak)),
                ("per-class-section", "Per class", _per_class(report, weak)),
                ("matrix", "Confusion matrix", _matrix(report)),
                ("mistakes-section", "Mistakes", _mistakes(report, mistakes, {i: thumbs[k] for i, k in
                                                                             thumb_of.items()}, root)),
                ("training", "Training", _training(meta, list(history))),
                ("data", "Data", _data_section(report, meta, problems, root))]
    cal = _calibration(report)
    if cal:
        sections.append(("calibration-section", "Calibration", cal))
    if compare:
        dis = compare.get("disagreements") or []
        pics = thumbnails([str(r.get("path")) for r in dis[:MAX_COMPARE_THUMBS]])
        sections.append(("compare", "Comparison", _compare(compare, {k: t for k, t in enumerate(pics) if t})))
    return page(f"imgclf report: {report.get('model')}", _header(report, meta, when), sections, data)


def read_compare(out: Path) -> Optional[dict]:
    """OUT/compare.json (written by a comparison of two models), when there is a readable one."""
    p = Path(out) / COMPARE_FILE
    if not p.is_file():
        return None
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_report(out: Path, report: dict, *, paths: Sequence[str], true, pred, confidence,
                 metadata: Optional[dict] = None, model_dir: Optional[Path] = None, problems: Sequence = (),
                 max_images: int = DEFAULT_IMAGES) -> Path:
    """Write OUT/report.html (atomically) and return its path. The training curves come from
    MODEL_DIR/history.csv, a comparison from OUT/compare.json when present."""
    from imgclf import registry

    history = _history_rows(Path(model_dir) / registry.HISTORY) if model_dir else []
    text = build_report(report, paths=paths, true=true, pred=pred, confidence=confidence, metadata=metadata,
                        history=history, problems=problems, compare=read_compare(out), max_images=max_images)
    target = Path(out) / REPORT_FILE
    tmp = target.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target


def open_in_browser(path, reporter=None) -> None:
    """Open the report with the default browser (webbrowser); a machine without one gets a warning."""
    import webbrowser

    uri = Path(path).resolve().as_uri()
    try:
        opened = webbrowser.open(uri)
    except webbrowser.Error:
        opened = False
    if not opened and reporter is not None:
        reporter.warn(f"could not open a browser; the report is {path}")
