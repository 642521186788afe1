"""Make docs/report-screenshot.png from a report.html: open it in headless Chromium (tests/browser.py), click
the largest off-diagonal cell of the confusion matrix, take the page down to the mistakes gallery, shrink it.

    python docs/report_screenshot.py REGISTRY/fashion/1/evaluation/report.html [docs/report-screenshot.png]
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import browser  # noqa: E402
from PIL import Image  # noqa: E402

WIDTH, SHOWN_WIDTH = 1280, 960


def main(report: str, out: str = str(Path(__file__).resolve().parent / "report-screenshot.png")) -> None:
    driver = browser.start(WIDTH, 1000)
    try:
        driver.get(Path(report).resolve().as_uri())
        best = driver.execute_script(
            "var b = Array.from(document.querySelectorAll('button[data-r]')).filter("
            "  x => x.dataset.r !== x.dataset.c && !x.disabled);"
            "b.sort((x, y) => parseInt(y.textContent) - parseInt(x.textContent)); return b.length ? b[0] : null;")
        if best is not None:
            best.click()
        bottom = driver.execute_script("var m = document.getElementById('mistakes-section');"
                                       "return Math.ceil(m.getBoundingClientRect().bottom + window.scrollY) + 16")
        driver.set_window_size(WIDTH, bottom + 140)   # the window's frame is part of the height
        driver.execute_script("window.scrollTo(0, 0)")
        png = driver.get_screenshot_as_png()
        errors = browser.console_errors(driver)
    finally:
        driver.quit()
    if errors:
        raise SystemExit(f"console errors: {errors}")
    im = Image.open(io.BytesIO(png)).convert("RGB")
    im = im.crop((0, 0, im.size[0], min(im.size[1], bottom)))
    im = im.resize((SHOWN_WIDTH, round(im.size[1] * SHOWN_WIDTH / im.size[0])), Image.Resampling.LANCZOS)
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"{out}: {im.size[0]}x{im.size[1]}, {Path(out).stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main(*sys.argv[1:])
