"""`imgclf synth`: end to end on sample_images/ (1 epoch at 16 px), --from, the registry kind, the leakage
guard in scan/split/train, and the one-line errors for bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from conftest import SAMPLE_IMAGES, cli, error_line, table_rows
from imgclf.config import SYNTH_MARKER

CLASSES = sorted(p.name for p in SAMPLE_IMAGES.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One GAN trained on sample_images/ (1 epoch, 16 px) and 3 images of two classes written."""
    base = tmp_path_factory.mktemp("synth")
    reg, out = base / "reg", base / "out"
    r = cli("synth", SAMPLE_IMAGES, out, "--classes", "bag,coat", "--per-class", "3", "--epochs", "1",
            "--image-size", "16", "--name", "fm-gan", "--registry", reg, "--format", "json")
    assert r.exit_code == 0, r.output
    return {"reg": reg, "out": out, "result": json.loads(r.stdout), "stderr": r.stderr}


def test_writes_marked_pngs_and_a_grid(made):
    out = made["out"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bag", "coat"]
    for cls in ("bag", "coat"):
        files = sorted(p.name for p in (out / cls).iterdir())
        assert files == ["synth_1.png", "synth_2.png", "synth_3.png"]
        with Image.open(out / cls / "synth_2.png") as im:
            assert im.size == (16, 16) and im.mode == "L"  # sample_images are grayscale
            marker = json.loads(im.info[SYNTH_MARKER])
        assert marker["class"] == cls and marker["generator"] == "fm-gan:1" and marker["number"] == 2
    with Image.open(out / "synth_grid.png") as grid:
        # one row per class of the generator (all 10 classes, 48 px cells + 2 px gaps)
        assert grid.size[1] == len(CLASSES) * (48 + 2)
    assert made["result"]["per_class"] == {"bag": 3, "coat": 3}
    assert "training the GAN: 600 real images, 10 classes, 16 px" in made["stderr"]


def test_generator_in_registry_listed_apart(made):
    meta = json.loads((made["reg"] / "fm-gan" / "1" / "metadata.json").read_text())
    assert meta["kind"] == "generator" and meta["class_names"] == CLASSES and meta["image_size"] == 16
    assert meta["train_counts"] == {c: 60 for c in CLASSES}
    assert (made["reg"] / "fm-gan" / "1" / "model.keras").is_file()
    listed = json.loads(cli("models", "list", "--registry", made["reg"], "--format", "json").stdout)
    assert listed["models"] == [] and [g["name"] for g in listed["generators"]] == ["fm-gan"]
    table = cli("models", "list", "--registry", made["reg"]).stdout
    assert "image generators (imgclf synth)" in table
    assert ["fm-gan", "1", "10", "16"] == table_rows(table.split("image generators")[1])[0][:4]


def test_classifier_commands_refuse_a_generator(made, tmp_path):
    for args in (["predict", "--model", "fm-gan", str(made["out"] / "bag" / "synth_1.png")], ["export", "fm-gan"]):
        r = cli(*args, "--registry", made["reg"])
        assert r.exit_code == 1
        assert "fm-gan:1 is an image generator (from `imgclf synth`), not a classifier" in error_line(r)
    # `latest` means the newest classifier: there is none here
    r = cli("predict", str(made["out"] / "bag" / "synth_1.png"), "--registry", made["reg"])
    assert "no models in the registry" in error_line(r)


def test_from_makes_more_without_overwriting(made, tmp_path):
    out = tmp_path / "more"
    shutil.copytree(made["out"], out)
    before = (out / "bag" / "synth_1.png").read_bytes()
    r = cli("synth", "--from", "fm-gan", out, "--per-class", "2", "--classes", "bag", "--registry", made["reg"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "bag").iterdir()) == [f"synth_{n}.png" for n in range(1, 6)]
    assert (out / "bag" / "synth_1.png").read_bytes() == before
    assert (out / "synth_grid.png").is_file() and (out / "synth_grid_2.png").is_file()
    # noise is seeded by (seed, class, number): image 1 of a fresh folder is the training run's image 1
    fresh = tmp_path / "fresh"
    assert cli("synth", "--from", "fm-gan", fresh, "--per-class", "1", "--classes", "bag",
               "--registry", made["reg"]).exit_code == 0
    a = np.asarray(Image.open(fresh / "bag" / "synth_1.png"), dtype=int)
    assert np.abs(a - np.asarray(Image.open(out / "bag" / "synth_1.png"), dtype=int)).max() <= 1
    assert not (out / "bag" / "synth_4.png").read_bytes() == (out / "bag" / "synth_5.png").read_bytes()


# ------------------------------------------------------------------------------------------ leakage guard
def _tree(root: Path, classes=("a", "b"), n=12, size=20, synth=0) -> Path:
    rng = np.random.default_rng(0)
    for ci, cls in enumerate(classes):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 60, (size, size), dtype=np.uint8) + ci * 120
            Image.fromarray(arr, "L").save(d / f"img{i}.png")
        for i in range(synth):
            info = PngImagePlugin.PngInfo()
            info.add_text(SYNTH_MARKER, "{}")
            Image.fromarray(np.full((size, size), 200, np.uint8), "L").save(d / f"synth_{i + 1}.png", pnginfo=info)
    return root


def _marked_only(folder: Path) -> Path:
    """A synthetic image with an ordinary name: found by its PNG marker alone."""
    info = PngImagePlugin.PngInfo()
    info.add_text(SYNTH_MARKER, "{}")
    path = folder / "renamed.png"
    Image.fromarray(np.full((20, 20), 100, np.uint8), "L").save(path, pnginfo=info)
    return path


def test_split_keeps_synthetic_in_train(tmp_path):
    src = _tree(tmp_path / "src", synth=3)
    _marked_only(src / "a")
    shutil.copy(src / "b" / "img0.png", src / "b" / "synth_9.png")  # by name alone, no marker
    r = cli("split", src, tmp_path / "dest", "--val", "0.25", "--test", "0.25", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["synthetic_in_train"] == 8
    for split in ("val", "test"):
        names = [p.name for p in (tmp_path / "dest" / split).rglob("*.png")]
        assert names and not [n for n in names if n.startswith("synth_") or n == "renamed.png"], names
    train = {p.name for p in (tmp_path / "dest" / "train" / "a").iterdir()}
    assert {"synth_1.png", "synth_2.png", "synth_3.png", "renamed.png"} <= train
    # the real images alone are split by the fractions: 12 per class -> 6 train, 3 val, 3 test
    assert len(list((tmp_path / "dest" / "val" / "a").iterdir())) == 3


def test_scan_reports_synthetic_and_refuses_them_in_val(tmp_path):
    root = tmp_path / "data"
    _tree(root / "train", synth=2)
    _tree(root / "val", n=4)
    leaked = _marked_only(root / "val" / "a")
    r = cli("scan", root, "--format", "json")
    report = json.loads(r.stdout)
    assert report["splits"]["train"]["synthetic"] == 4
    assert report["splits"]["train"]["synthetic_per_class"] == {"a": 2, "b": 2}
    assert report["splits"]["val"]["synthetic"] == 1
    assert {"path": str(leaked), "reason": "synthetic image (imgclf synth) in the val split: evaluation needs "
            "real images; move it to train/"} in report["problems"]
    r = cli("train", root, "--epochs", "1", "--registry", tmp_path / "reg")
    assert r.exit_code == 1
    assert f"{root / 'val'}: 1 synthetic image(s) from `imgclf synth` (e.g. {leaked})" in error_line(r)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args, code, message", [
    (["--classes", "a,zebra"], 2, "--classes: unknown class(es) zebra (known: a, b)"),
    (["--per-class", "3", "--target-per-class", "20"], 2, "give only one of --per-class N"),
    (["--per-class", "0"], 2, "--per-class must be at least 1, got 0"),
    (["--image-size", "30"], 2, "--image-size must be 8 to 256 and 4-8 pixels doubled"),
])
def test_bad_options(tmp_path, args, code, message):
    data = _tree(tmp_path / "data")
    r = cli("synth", data, tmp_path / "out", *args, "--registry", tmp_path / "reg")
    assert r.exit_code == code and message in error_line(r)


def test_bad_data(tmp_path):
    data = _tree(tmp_path / "data")
    r = cli("synth", data, data / "a" / "more", "--registry", tmp_path / "reg")
    assert r.exit_code == 2 and f"{data / 'a' / 'more'}: OUT must not be inside DATA" in error_line(r)
    few = _tree(tmp_path / "few", n=6)
    r = cli("synth", few, tmp_path / "out", "--registry", tmp_path / "reg")
    assert r.exit_code == 1
    assert "class(es) with fewer than 10 real training images: a (6), b (6)" in error_line(r)
    r = cli("synth", "--from", "nope", tmp_path / "out", "--registry", tmp_path / "reg")
    assert "--from: give --per-class N" in error_line(r)
    r = cli("synth", "--from", "nope", tmp_path / "out", "--per-class", "2", "--registry", tmp_path / "reg")
    assert r.exit_code == 1 and "unknown model 'nope'" in error_line(r)
    assert not (tmp_path / "out").exists()


def test_mixed_sizes_resized_and_split_root_train_only(tmp_path):
    root = tmp_path / "data"
    _tree(root / "train", size=20)
    for i, p in enumerate(sorted((root / "train" / "b").iterdir())[:4]):
        Image.open(p).resize((24 + i, 24)).save(p)
    _tree(root / "test", n=3)
    r = cli("synth", root, tmp_path / "out", "--epochs", "1", "--image-size", "16", "--registry", tmp_path / "reg",
            "--format", "json")
    assert r.exit_code == 0, r.output
    assert "resized to 16x16" in r.stderr
    meta = json.loads((tmp_path / "reg" / "data-synth" / "1" / "metadata.json").read_text())
    assert meta["train_counts"] == {"a": 12, "b": 12}  # train/ only, never test/
    # default count: top every class up to the largest one, which is already balanced
    assert json.loads(r.stdout)["per_class"] == {"a": 0, "b": 0}
