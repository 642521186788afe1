"""Pictures of an evaluation, drawn with Pillow: the confusion matrix and a grid of the worst mistakes."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def misclassified_png(path, rows: List[dict], pixels: List[np.ndarray], max_images: int = 25) -> None:
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
