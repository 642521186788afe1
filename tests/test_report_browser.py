"""report.html in a real browser (headless Chromium through Selenium): it loads nothing from the network,
logs no console error, every picture loads, a confusion-matrix cell shows exactly its images, and a class
folder named `<img src=x onerror=alert(1)>` is shown as text and runs nothing.

Needs Chromium and chromedriver (Debian/Ubuntu: `apt-get install -y chromium chromium-driver`); without them
these tests FAIL with that hint (see tests/browser.py), they are never skipped.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import browser
from conftest import COLOURS, cli, make_tree, noisy

EVIL = "<img src=x onerror=alert(1)>"
CLASSES = ["blue", "green", EVIL]          # EVIL is drawn red


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny model trained on a tree with the evil class folder, evaluated on it (with planted mistakes and a
    broken file): (data root, evaluation JSON, folder of report.html)."""
    base = tmp_path_factory.mktemp("browser")
    data = make_tree(base / "data", {c: 8 for c in CLASSES}, size=(20, 20), seed=7)
    rng = np.random.default_rng(8)
    noisy("RGB", (20, 20), COLOURS["green"], rng).save(data / "blue" / "looks_green.png")
    noisy("RGB", (20, 20), COLOURS["blue"], rng).save(data / EVIL / "looks_blue.png")
    noisy("RGB", (20, 20), COLOURS["red"], rng).save(data / "green" / "looks_red.png")
    (data / "green" / f"{EVIL}.png").write_bytes(b"broken")
    registry = base / "registry"
    r = cli("train", data, "--registry", registry, "--arch", "mlp", "--epochs", 3, "--image-size", 16,
            "--patience", 0, "--name", "evil", "--format", "json")
    assert r.exit_code == 0, r.output
    r = cli("evaluate", "evil", data, "--registry", registry, "--out", base / "out", "--format", "json")
    assert r.exit_code == 0, r.output
    return data, json.loads(r.stdout), base / "out"


@pytest.fixture(scope="module")
def driver():
    d = browser.start()       # raises BrowserMissing (a failure, with the install command) without a browser
    yield d
    d.quit()


def open_report(driver, path: Path):
    driver.get_log("browser"), driver.get_log("performance")       # start with empty logs
    driver.get(path.resolve().as_uri())
    driver.execute_script("return document.readyState")


def expected_cells(data: Path, report: dict):
    """(true, predicted) -> the set of files (relative to the data folder), from the files on disk and
    the evaluation's list of mistakes."""
    names = report["class_names"]
    wrong = {os.path.relpath(m["path"], data): (names.index(m["true"]), names.index(m["predicted"]))
             for m in report["misclassified"]}
    cells = {}
    for i, c in enumerate(names):
        for p in sorted((data / c).iterdir()):
            rel = os.path.relpath(p, data)
            if p.name.startswith(EVIL):
                continue                                            # the broken file: skipped
            cells.setdefault(wrong.get(rel, (i, i)), set()).add(rel)
    return cells


def test_the_report_in_a_browser(driver, evaluated, tmp_path):
    data, report, out = evaluated
    open_report(driver, out / "report.html")
    # nothing from the network: the only requests are the page itself and its data: pictures
    urls = browser.requested_urls(driver)
    page_url = (out / "report.html").resolve().as_uri()
    assert page_url in urls
    assert [u for u in urls if u != page_url and not u.startswith("data:")] == []
    assert browser.console_errors(driver) == []
    assert browser.alert_text(driver) is None
    # every picture decoded
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.getAttribute('src')"
        ".slice(0, 11)])")
    assert images and all(ok and w > 0 and src.startswith("data:image/") for ok, w, src in images), images
    n_mistakes = len(report["misclassified"])
    assert len(images) == n_mistakes + 1                              # the gallery and the training curves
    # the evil class folder is text, everywhere it appears, and made no element
    body = driver.execute_script("return document.body.innerText")
    assert body.count(EVIL) >= 5                                     # table, matrix, data, skipped file, gallery
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"], [onerror]').length") == 0

    cells = expected_cells(data, report)
    names = report["class_names"]
    assert sum(len(v) for v in cells.values()) == report["images"]
    clicked = 0
    for (i, j), files in sorted(cells.items()):
        driver.find_element("css selector", f'button[data-r="{i}"][data-c="{j}"]').click()
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#cell-images figure, #cell-paths li'))"
            ".map(e => e.getAttribute('data-path'))")
        assert sorted(shown) == sorted(files), (names[i], names[j])
        title = driver.find_element("id", "cell-title").text
        assert title.startswith(f"{len(files)} image") and f"true {names[i]}, predicted {names[j]}" in title
        loaded = driver.execute_script(
            "return Array.from(document.querySelectorAll('#cell-images img')).map(i => i.naturalWidth)")
        assert len(loaded) == len(files) and all(w > 0 for w in loaded)
        clicked += 1
    assert clicked >= 4                                              # the diagonal and mistakes
    # an empty cell cannot be clicked
    empty = [(i, j) for i in range(3) for j in range(3) if (i, j) not in cells]
    for i, j in empty:
        assert driver.find_element("css selector", f'button[data-r="{i}"][data-c="{j}"]').get_attribute("disabled")
    assert browser.console_errors(driver) == [] and browser.alert_text(driver) is None
    assert [u for u in browser.requested_urls(driver) if not u.startswith("data:")] == []
    # a screenshot of the whole page
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height, 4000))
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 600
        assert len(im.convert("RGB").getcolors(1 << 24)) > 100      # a page, not a blank
    driver.set_window_size(1280, 1000)


def test_cells_beyond_report_images_list_their_files(driver, evaluated, tmp_path):
    data, report, out = evaluated
    r = cli("evaluate", "evil", data, "--registry", out.parent / "registry", "--out", tmp_path / "out",
            "--report-images", 1, "--format", "json")
    assert r.exit_code == 0, r.output
    open_report(driver, tmp_path / "out" / "report.html")
    cells = expected_cells(data, report)
    names = report["class_names"]
    i = names.index("green")
    driver.find_element("css selector", f'button[data-r="{i}"][data-c="{i}"]').click()
    pictures = driver.execute_script(
        "return Array.from(document.querySelectorAll('#cell-images figure')).map(e => e.getAttribute('data-path'))")
    listed = driver.execute_script(
        "return Array.from(document.querySelectorAll('#cell-paths li')).map(e => e.getAttribute('data-path'))")
    assert pictures == [] and sorted(listed) == sorted(cells[(i, i)])
    assert browser.console_errors(driver) == []


def test_without_a_browser_the_tests_fail_and_say_how_to_install_one(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLF_CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(browser.BrowserMissing) as e:
        browser.start()
    assert isinstance(e.value, AssertionError)                       # a failure, not a skip
    assert "apt-get install -y chromium chromium-driver" in str(e.value) and "no-chromium" not in str(e.value)
