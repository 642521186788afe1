"""Pictures of an evaluation, drawn with Pillow: the confusion matrix and a grid of the worst mistakes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imgclf.config import PICTURE_IMAGES


def _font(size: int) -> Tuple[ImageFont.ImageFont, bool]:
    """(font, has_unicode_arrow)."""
    for name in ("DejaVuSans.ttf", "Arial Unicode.ttf", "arial.ttf"):
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    return ImageFont.load_default(size), False


def _text_w(draw, text, font) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def confusion_matrix_png(path, class_names: Sequence[str], matrix: np.ndarray) -> None:
    n = len(class_names)
    font, _ = _font(14)
    small, _ = _font(12)
    cell = max(36, min(64, 640 // max(n, 1)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_w(probe, c, font) for c in class_names) + 16
    top = label_w + 40
    width, height = label_w + n * cell + 20, top + n * cell + 20
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((label_w, 6), "confusion matrix: rows = true, columns = predicted", fill="black", font=font)
    row_sums = matrix.sum(axis=1, keepdims=True).clip(min=1)
    frac = matrix / row_sums
    for i in range(n):
        d.text((label_w - 8 - _text_w(d, class_names[i], font), top + i * cell + cell // 2 - 8),
               class_names[i], fill="black", font=font)
        # column labels, rotated
        tw = _text_w(d, class_names[i], font) + 4
        lab = Image.new("RGBA", (tw, 20), (255, 255, 255, 0))
        ImageDraw.Draw(lab).text((0, 2), class_names[i], fill="black", font=font)
        lab = lab.rotate(90, expand=True)  # reads bottom to top, ending just above its column
        img.paste(lab, (label_w + i * cell + cell // 2 - 10, top - 8 - tw), lab)
        for j in range(n):
            f = float(frac[i, j])
            if i == j:
                colour = (int(255 - 180 * f), int(255 - 60 * f), int(255 - 180 * f))
            else:
                colour = (255, int(255 - 200 * f), int(255 - 200 * f))
            x0, y0 = label_w + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(200, 200, 200))
            text = str(int(matrix[i, j]))
            d.text((x0 + (cell - _text_w(d, text, small)) // 2, y0 + cell // 2 - 7), text, fill="black", font=small)
    img.save(path)


def misclassified_png(path, rows: List[dict], pixels: List[np.ndarray], max_images: int = PICTURE_IMAGES) -> None:
    """A grid of the most confident mistakes, each titled 'true → predicted (p)'."""
    rows, pixels = rows[:max_images], pixels[:max_images]
    font, unicode_ok = _font(12)
    arrow = "→" if unicode_ok else "->"
    tile, pad, title_h = 128, 8, 34
    cols = max(1, min(5, len(rows)))
    nrows = max(1, (len(rows) + cols - 1) // cols)
    img = Image.new("RGB", (cols * (tile + pad) + pad, nrows * (tile + title_h + pad) + pad + 24), "white")
    d = ImageDraw.Draw(img)
    heading = f"{len(rows)} most confident mistakes" if rows else "no misclassified images"
    d.text((pad, 4), heading, fill="black", font=font)
    for k, (row, arr) in enumerate(zip(rows, pixels)):
        r, c = divmod(k, cols)
        x0, y0 = pad + c * (tile + pad), 24 + pad + r * (tile + title_h + pad)
        pic = Image.fromarray(arr[:, :, 0] if arr.shape[-1] == 1 else arr).convert("RGB")
        pic.thumbnail((tile, tile), Image.Resampling.NEAREST if max(pic.size) < tile else Image.Resampling.BILINEAR)
        if max(pic.size) < tile:
            scale = tile / max(pic.size)
            pic = pic.resize((max(1, int(pic.size[0] * scale)), max(1, int(pic.size[1] * scale))),
                             Image.Resampling.NEAREST)
        img.paste(pic, (x0 + (tile - pic.size[0]) // 2, y0 + title_h))
        d.text((x0, y0), f"{row['true']} {arrow} {row['predicted']}", fill=(180, 0, 0), font=font)
        d.text((x0, y0 + 15), f"({row['confidence']:.2f})", fill="black", font=font)
    img.save(path)


# ------------------------------------------------------------------------ calibration and risk-coverage


def _axes(d, box, font, x_label: str, y_label: str, y_range=(0.0, 1.0)):
    """Draw a frame with ticks at 0, 0.2, ..., 1 (x) and 5 steps of y_range; return data -> pixel mappers."""
    x0, y0, x1, y1 = box
    lo, hi = y_range
    d.rectangle(box, outline="black")
    for i in range(6):
        f = i / 5
        x = x0 + f * (x1 - x0)
        d.line([x, y1, x, y1 + 4], fill="black")
        d.text((x - 8, y1 + 6), f"{f:.1f}", fill="black", font=font)
        y = y1 - f * (y1 - y0)
        d.line([x0 - 4, y, x0, y], fill="black")
        d.text((x0 - 34, y - 7), f"{lo + f * (hi - lo):.2f}", fill="black", font=font)
    d.text(((x0 + x1) // 2 - _text_w(d, x_label, font) // 2, y1 + 22), x_label, fill="black", font=font)
    d.text((x0 - 34, y0 - 20), y_label, fill="black", font=font)
    span = (hi - lo) or 1.0
    return (lambda v: x0 + v * (x1 - x0)), (lambda v: y1 - (v - lo) / span * (y1 - y0))


def reliability_png(path, reliability: dict, calibration: dict) -> None:
    """Reliability diagrams before and after temperature scaling: per confidence bin, the accuracy (bar)
    against the mean confidence (red mark); a calibrated model's bars meet the diagonal."""
    font, _ = _font(12)
    title_font, _ = _font(14)
    size, margin = 300, 60
    img = Image.new("RGB", (2 * (size + margin) + margin, size + 2 * margin + 30), "white")
    d = ImageDraw.Draw(img)
    d.text((margin, 8), f"reliability ({len(reliability['calibrated'])} bins; bar = accuracy, red = mean "
                        "confidence, diagonal = perfect calibration)", fill="black", font=title_font)
    panels = [("uncalibrated", calibration["ece_uncalibrated"], "T = 1"),
              ("calibrated", calibration["ece"], f"T = {calibration['temperature']:.3f}")]
    for k, (key, ece_value, t_text) in enumerate(panels):
        x0 = margin + k * (size + margin)
        box = (x0, margin, x0 + size, margin + size)
        fx, fy = _axes(d, box, font, "confidence", "accuracy")
        d.line([fx(0), fy(0), fx(1), fy(1)], fill=(170, 170, 170), width=1)
        for b in reliability[key]:
            if not b["images"]:
                continue
            xa, xb = fx(b["low"]) + 1, fx(b["high"]) - 1
            d.rectangle([xa, fy(b["accuracy"]), xb, fy(0)], fill=(90, 130, 210), outline=(40, 70, 150))
            yc = fy(b["confidence"])
            d.line([xa, yc, xb, yc], fill=(200, 30, 30), width=2)
        d.text((x0 + 6, margin + 6), f"{key} ({t_text})", fill="black", font=font)
        d.text((x0 + 6, margin + 22), f"ECE {ece_value:.4f}", fill="black", font=font)
    img.save(path)


def risk_coverage_png(path, probs: np.ndarray, labels: np.ndarray, rows: List[dict], target=None) -> None:
    """Accuracy on the images kept against the share kept, as the confidence threshold rises (right to left),
    with the table's thresholds marked and, when given, the target accuracy."""
    font, _ = _font(12)
    title_font, _ = _font(14)
    w, h, margin = 520, 340, 60
    img = Image.new("RGB", (w + 2 * margin, h + 2 * margin + 20), "white")
    d = ImageDraw.Draw(img)
    d.text((margin, 8), "risk-coverage: accuracy on the images kept (top probability >= threshold)",
           fill="black", font=title_font)
    n = len(labels)
    if n:
        conf = probs.max(axis=1)
        order = np.argsort(-conf, kind="stable")
        correct = (probs.argmax(axis=1) == labels)[order].astype(float)
        acc = np.cumsum(correct) / np.arange(1, n + 1)
        lo = max(0.0, np.floor(float(acc.min()) * 10) / 10 - 0.05)
    else:
        acc, lo = np.zeros(0), 0.0
    fx, fy = _axes(d, (margin, margin, margin + w, margin + h), font, "coverage (share of images kept)",
                   "accuracy", (lo, 1.0))
    if target and target.get("target") is not None and target["target"] >= lo:
        y = fy(target["target"])
        for x in range(margin, margin + w, 8):
            d.line([x, y, x + 4, y], fill=(0, 150, 0))
        d.text((margin + 4, y - 16), f"target {target['target']:.3f}", fill=(0, 120, 0), font=font)
    if n:
        d.line([(fx((i + 1) / n), fy(a)) for i, a in enumerate(acc)] if n > 1 else
               [(fx(1), fy(acc[0]))] * 2, fill=(40, 70, 150), width=2)
    for r in rows:
        if r["accuracy"] is None or r["coverage"] <= 0:
            continue
        x, y = fx(r["coverage"]), fy(r["accuracy"])
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(200, 30, 30))
        if r["threshold"] in (0.0, 0.5, 0.9, 0.99):
            d.text((x + 4, y + 4), f"t={r['threshold']:g}", fill=(150, 20, 20), font=font)
    img.save(path)


def disagreements_png(path, rows: List[dict], pixels: List[np.ndarray], heading: str,
                      max_images: int = PICTURE_IMAGES) -> None:
    """A grid of images two models disagree on, each titled with the true class and both predictions."""
    rows, pixels = rows[:max_images], pixels[:max_images]
    font, _ = _font(12)
    tile, pad, title_h = 128, 8, 50
    cols = max(1, min(5, len(rows)))
    nrows = max(1, (len(rows) + cols - 1) // cols)
    img = Image.new("RGB", (cols * (tile + pad) + pad, nrows * (tile + title_h + pad) + pad + 24), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 4), heading if rows else "no images where one model is right and the other wrong",
           fill="black", font=font)
    for k, (row, arr) in enumerate(zip(rows, pixels)):
        r, c = divmod(k, cols)
        x0, y0 = pad + c * (tile + pad), 24 + pad + r * (tile + title_h + pad)
        pic = Image.fromarray(arr[:, :, 0] if arr.shape[-1] == 1 else arr).convert("RGB")
        scale = tile / max(pic.size)
        pic = pic.resize((max(1, int(pic.size[0] * scale)), max(1, int(pic.size[1] * scale))),
                         Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
        img.paste(pic, (x0 + (tile - pic.size[0]) // 2, y0 + title_h))
        d.text((x0, y0), f"true {row['true']}", fill="black", font=font)
        for j, key in enumerate(("a", "b")):
            ok = row[f"pred_{key}"] == row["true"]
            d.text((x0, y0 + 15 * (j + 1)), f"{key.upper()}: {row[f'pred_{key}']} ({row[f'conf_{key}']:.2f})",
                   fill=(0, 120, 0) if ok else (180, 0, 0), font=font)
    img.save(path)


# ------------------------------------------------------------------------------------- training curves
CURVE_COLOURS = {"train": (31, 119, 180), "val": (230, 120, 20)}
PHASE_FILL = {"train": None, "head": None, "fine-tune": (236, 242, 250)}


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(1, ticks)
    mag = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def _dashed(d, points, fill, width, dash=6, gap=4):
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = float(np.hypot(x1 - x0, y1 - y0))
        pos = 0.0
        while pos < length:
            end = min(pos + dash, length)
            a, b = pos / length if length else 0, end / length if length else 0
            d.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                   fill=fill, width=width)
            pos = end + gap


def phases_of(rows: List[dict]) -> List[Tuple[str, int, int]]:
    """(phase, first epoch, last epoch) runs, in the order history.csv has them."""
    out: List[Tuple[str, int, int]] = []
    for r in rows:
        phase, epoch = r.get("phase") or "train", int(float(r["epoch"]))
        if out and out[-1][0] == phase:
            out[-1] = (phase, out[-1][1], epoch)
        else:
            out.append((phase, epoch, epoch))
    return out


#: the curves picture's layout: one panel's plot area, its margins, and the gap between the two panels
_CURVES_LAYOUT = dict(pw=430, ph=260, left=56, right=14, top=52, bottom=44, gutter=24)


def curves_png(path, rows: List[dict], title: str = "") -> None:
    """Loss and accuracy per epoch (train solid, validation dashed), from history.csv rows; the epochs of a
    fine-tune phase are shaded and its start marked. `path` is a file name or a binary file object."""
    font, _ = _font(13)
    small, _ = _font(11)
    g = _CURVES_LAYOUT
    width, height = 2 * (g["left"] + g["pw"] + g["right"]) + g["gutter"], g["top"] + g["ph"] + g["bottom"]
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((g["left"], 8), title or "training curves", fill="black", font=font)
    if not rows:
        d.text((g["left"], g["top"] + g["ph"] // 2), "no epochs recorded", fill=(120, 120, 120), font=font)
        img.save(path, format="PNG")
        return
    phases = phases_of(rows)
    _curves_legend(d, rows, phases, width, small)
    epochs = [int(float(r["epoch"])) for r in rows]
    for index, metric in enumerate(("loss", "accuracy")):
        x0 = index * (g["left"] + g["pw"] + g["right"] + g["gutter"]) + g["left"]
        series = {s: [(_float(r.get(("val_" if s == "val" else "") + metric)), int(float(r["epoch"])))
                      for r in rows] for s in ("train", "val")}
        panel = _Panel.fit(metric, series, x0, g["top"], g["pw"], g["ph"], min(epochs), max(epochs))
        _draw_phases(d, panel, phases, small)
        _draw_axes(d, panel, metric, font, small)
        _draw_series(d, panel, series)
    img.save(path, format="PNG")


def _curves_legend(d, rows: List[dict], phases, width: int, small) -> None:
    """Top right: the train (solid) and validation (dashed) lines, and the fine-tune shading if any."""
    lx = width - 330
    has_val = any(_float(r.get("val_loss")) is not None or _float(r.get("val_accuracy")) is not None for r in rows)
    for name, label in (("train", "train"), ("val", "validation"))[:2 if has_val else 1]:
        y = 14
        if name == "train":
            d.line([(lx, y + 7), (lx + 26, y + 7)], fill=CURVE_COLOURS[name], width=2)
        else:
            _dashed(d, [(lx, y + 7), (lx + 26, y + 7)], CURVE_COLOURS[name], 2)
        d.text((lx + 32, y), label, fill="black", font=small)
        lx += 32 + _text_w(d, label, small) + 18
    if any(p[0] == "fine-tune" for p in phases):
        d.rectangle([lx, 15, lx + 20, 27], fill=PHASE_FILL["fine-tune"], outline=(150, 170, 200))
        d.text((lx + 26, 14), "fine-tune", fill="black", font=small)


@dataclass
class _Panel:
    """One plot of the curves picture: where it is, and the value and epoch ranges it shows."""

    x0: float
    y0: float
    pw: int
    ph: int
    lo: float
    hi: float
    step: float
    e_lo: int
    e_hi: int

    @classmethod
    def fit(cls, metric: str, series: dict, x0, y0, pw, ph, e_lo, e_hi) -> "_Panel":
        """Accuracy from 0 to 1; loss from 0 to a round number above its largest value."""
        values = [v for s in series.values() for v, _ in s if v is not None]
        if metric == "accuracy":
            lo, hi = 0.0, 1.0
        else:
            lo, hi = 0.0, max(values) * 1.05 if values and max(values) > 0 else 1.0
        step = _nice_step(hi - lo)
        hi = float(np.ceil(hi / step) * step) if metric != "accuracy" else hi
        return cls(x0, y0, pw, ph, lo, hi, step, e_lo, e_hi)

    def px(self, epoch):
        e_lo, e_hi = self.e_lo, self.e_hi
        return self.x0 + (self.pw * (epoch - e_lo) / (e_hi - e_lo) if e_hi > e_lo else self.pw / 2)

    def py(self, v):
        return self.y0 + self.ph - self.ph * (v - self.lo) / (self.hi - self.lo)

    @property
    def half(self) -> float:
        """Half an epoch's width: the shading of a phase reaches halfway to the next epoch."""
        return self.pw / (2 * max(1, self.e_hi - self.e_lo)) if self.e_hi > self.e_lo else self.pw / 2


def _draw_phases(d, p: _Panel, phases, small) -> None:
    """The fine-tune epochs shaded; a line and a label where each later phase starts."""
    x0, y0, pw, ph, half = p.x0, p.y0, p.pw, p.ph, p.half
    for phase, a, b in phases:
        fill = PHASE_FILL.get(phase)
        if fill:
            d.rectangle([max(x0, p.px(a) - half), y0, min(x0 + pw, p.px(b) + half), y0 + ph], fill=fill)
    for i, (phase, a, _) in enumerate(phases):
        if i:  # where a later phase starts
            xb = p.px(a) - half
            d.line([(xb, y0), (xb, y0 + ph)], fill=(90, 110, 150), width=1)
            d.text((xb + 4, y0 + 4), f"{phase} from epoch {a}", fill=(60, 80, 120), font=small)
        elif len(phases) > 1:
            d.text((x0 + 4, y0 + 4), f"{phase} epochs", fill=(60, 80, 120), font=small)


def _draw_axes(d, p: _Panel, label: str, font, small) -> None:
    """Grid lines and values, epoch ticks (at most about 10), the frame and the titles."""
    x0, y0, pw, ph = p.x0, p.y0, p.pw, p.ph
    t = p.lo
    while t <= p.hi + 1e-9:
        y = p.py(t)
        d.line([(x0, y), (x0 + pw, y)], fill=(228, 228, 228))
        text = f"{round(t, 6):g}"
        d.text((x0 - 8 - _text_w(d, text, small), y - 7), text, fill=(70, 70, 70), font=small)
        t += p.step
    estep = max(1, int(np.ceil((p.e_hi - p.e_lo + 1) / 10)))
    for e in range(p.e_lo, p.e_hi + 1, estep):
        d.line([(p.px(e), y0 + ph), (p.px(e), y0 + ph + 4)], fill=(70, 70, 70))
        d.text((p.px(e) - _text_w(d, str(e), small) / 2, y0 + ph + 6), str(e), fill=(70, 70, 70), font=small)
    d.rectangle([x0, y0, x0 + pw, y0 + ph], outline=(120, 120, 120))
    d.text((x0 + pw / 2 - _text_w(d, "epoch", small) / 2, y0 + ph + 24), "epoch", fill="black", font=small)
    d.text((x0, y0 - 20), label, fill="black", font=font)


def _draw_series(d, p: _Panel, series: dict) -> None:
    """Train solid, validation dashed, a dot at every epoch with a value."""
    for s in ("train", "val"):
        pts = [(p.px(e), p.py(v)) for v, e in series[s] if v is not None]
        if not pts:
            continue
        colour = CURVE_COLOURS[s]
        if len(pts) > 1:
            if s == "train":
                d.line(pts, fill=colour, width=2, joint="curve")
            else:
                _dashed(d, pts, colour, 2)
        for x, y in pts:
            d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
