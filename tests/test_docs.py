"""The docs cannot drift from the code: the CLI reference is the current `--help`, the augmentation table is
config.AUGMENT_POLICIES, and the ONNX snippet of the user guide classifies exactly like `imgclf predict`."""
from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest
from PIL import Image

from imgclf.config import AUGMENT_POLICIES

from conftest import REPO, cli

DOCS = REPO / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", DOCS / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    gen = _generator()
    committed = gen.REFERENCE.read_text(encoding="utf-8") if gen.REFERENCE.is_file() else ""
    assert committed == gen.generate(), \
        "docs/cli-reference.md is stale: run `python docs/gen_cli_reference.py` and commit the result"


def test_cli_reference_lists_every_command():
    gen = _generator()
    text = gen.REFERENCE.read_text(encoding="utf-8")
    paths = gen.command_paths()
    assert ("models", "tag") in paths and ("predict",) in paths
    for path in paths:
        assert f"\n## {' '.join(('imgclf',) + path)}\n" in text


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    """A narrow terminal, forced colours or a CI service must not change the generated file."""
    from typer import rich_utils

    gen = _generator()
    expected = gen.generate()
    for key, value in {"COLUMNS": "40", "TERMINAL_WIDTH": "60", "FORCE_COLOR": "1", "GITHUB_ACTIONS": "true",
                       "TERM": "xterm-256color"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NO_COLOR", raising=False)
    # typer reads these once, at import: simulate a process that started in such an environment
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", 60, raising=False)
    monkeypatch.setattr(rich_utils, "FORCE_TERMINAL", True, raising=False)
    assert gen.generate() == expected
    assert "\x1b[" not in expected


def test_check_mode_fails_on_a_stale_file(tmp_path, monkeypatch, capsys):
    gen = _generator()
    stale = tmp_path / "cli-reference.md"
    stale.write_text("# old\n", encoding="utf-8")
    monkeypatch.setattr(gen, "REFERENCE", stale)
    assert gen.main(["--check"]) == 1
    assert "run `python docs/gen_cli_reference.py`" in capsys.readouterr().err
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


def _policy_rows(text: str) -> dict:
    """| `name` | flip | rotate | shift | zoom | brightness | contrast | hue | saturation | grayscale | shift px |
    rows of docs/augmentation.md."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`(\w+)`\s*\|(.*)\|\s*$", line)
        if m and m.group(1) in AUGMENT_POLICIES:
            cells = [c.strip() for c in m.group(2).split("|")]
            rows[m.group(1)] = cells
    return rows


def test_augmentation_policies_are_documented_with_their_values():
    text = (DOCS / "augmentation.md").read_text(encoding="utf-8")
    rows = _policy_rows(text)
    assert set(rows) == set(AUGMENT_POLICIES), "docs/augmentation.md: the policy table must list every policy"
    for name, values in AUGMENT_POLICIES.items():
        cells = rows[name]
        assert cells[0].strip("`") == values["flip"], (name, cells)
        documented = [float(c.rstrip("°")) for c in cells[1:12]]
        actual = [values[k] for k in ("rotate", "shift", "zoom", "brightness", "contrast", "hue", "saturation",
                                      "grayscale", "shift_px", "randconv", "crop")]
        assert documented == pytest.approx(actual), f"docs/augmentation.md, policy {name}: {cells} != {values}"


def _guide_snippet() -> str:
    text = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    marker = text.index("<!-- tested: tests/test_docs.py::test_onnx_snippet_of_the_guide -->")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    return block.group(1)


def test_onnx_snippet_of_the_guide(tmp_path, monkeypatch, exported):
    """The guide's onnxruntime + Pillow snippet gives the labels and confidences of `imgclf predict`,
    also for the inputs where preprocessing is easy to get wrong (transparency, grayscale, big JPEG)."""
    shutil.copy(exported.path / "model.onnx", tmp_path / "fashion.onnx")  # the name the snippet uses
    rng = np.random.default_rng(3)
    images = []
    for i, cls in enumerate(("red", "green", "blue")):
        images.append(sorted((exported.data / cls).iterdir())[0])
    rgba = np.zeros((30, 24, 4), np.uint8)
    rgba[..., 1] = 190
    rgba[:, :12, 3] = 255          # half opaque green, half transparent (composited on white)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half_transparent.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(tmp_path / "gray.png")
    photo = np.zeros((600, 800, 3), np.uint8)
    photo[..., 2] = 200
    photo = np.clip(photo + rng.normal(0, 30, photo.shape), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "big_blue.jpg", quality=90)   # decoded with JPEG draft scaling
    images += [tmp_path / "half_transparent.png", tmp_path / "gray.png", tmp_path / "big_blue.jpg"]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["classify.py", *map(str, images)])
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(_guide_snippet(), "user-guide.md:classify.py", "exec"), {"__name__": "__main__"})
    snippet = {}
    for line in out.getvalue().splitlines():
        m = re.match(r"^(.*): (\S+) \(([\d.]+)\)$", line)
        assert m, line
        snippet[m.group(1)] = (m.group(2), float(m.group(3)))

    r = cli("predict", *images, "--model", tmp_path / "fashion.onnx", "--format", "jsonl")
    assert r.exit_code == 0, r.output
    for row in map(json.loads, r.stdout.splitlines()):
        label, confidence = snippet[row["path"]]
        assert label == row["label"], row
        assert confidence == pytest.approx(row["confidence"], abs=1.5e-3), row
    assert len(snippet) == len(images)
