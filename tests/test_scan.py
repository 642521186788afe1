"""Messy real-world folders (issue 4): `imgclf scan`, and what train and predict do with the same files.

One corpus, built here, holds a file of every kind; for each the tests assert whether it is used or
reported with which reason, and that nothing prints a traceback.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import child_env, cli, error_line, make_tree, noisy, tree_digest

# file (below the corpus root) -> what is wrong with it: a word the reason must contain
BROKEN = {
    "cats/empty.png": "empty file",
    "cats/truncated.jpg": "truncated",
    "cats/text.png": "not an image",
    "cats/bomb.png": "too large",
    "cats/dangling.png": "dangling symlink",
}
# usable images, one of each kind
GOOD_CATS = [
    "cats/gray.png", "cats/rgba.png", "cats/palette_transparent.png", "cats/cmyk.jpg", "cats/sixteen_bit.png",
    "cats/one_pixel.png", "cats/two_frames.gif", "cats/img.tiff", "cats/img.bmp", "cats/img.webp",
    "cats/UPPER.JPG", "cats/png_named.jpg", "cats/exif_rotated.jpg", "cats/with space 한국어 🐱.png",
    "cats/-dash.png", "cats/nested/deeper/nested.png", "cats/dup_a.png", "cats/dup_b.png",
    "cats/conflict.png", "cats/link_to_dog.png",
]
GOOD_DOGS = ["dogs/d0.png", "dogs/d1.png", "dogs/d2.png", "dogs/d3.png", "dogs/d4.png", "dogs/conflict.png"]
JUNK = ["cats/.DS_Store", "cats/Thumbs.db", "cats/._x.png", "cats/notes.txt", "cats/desktop.ini"]


def build_corpus(root: Path) -> Path:
    rng = np.random.default_rng(11)
    cats, dogs = root / "cats", root / "dogs"
    for d in (cats / "nested" / "deeper", dogs, root / "empty_class"):
        d.mkdir(parents=True)

    def rgb(size=(20, 16)):  # cats are bright, dogs dark: a model can learn them
        return noisy("RGB", size, (200, 190, 180), rng)

    noisy("L", (20, 16), 200, rng).save(cats / "gray.png")
    rgba = np.concatenate([np.asarray(rgb()), np.full((16, 20, 1), 180, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(cats / "rgba.png")
    rgb().convert("P").save(cats / "palette_transparent.png", transparency=0)
    rgb().convert("CMYK").save(cats / "cmyk.jpg")
    Image.fromarray(rng.integers(40000, 60000, (16, 20)).astype(np.uint16)).save(cats / "sixteen_bit.png")
    Image.new("RGB", (1, 1), (220, 210, 200)).save(cats / "one_pixel.png")
    rgb().convert("P").save(cats / "two_frames.gif", save_all=True, append_images=[rgb().convert("P")])
    rgb().save(cats / "img.tiff")
    rgb().save(cats / "img.bmp")
    rgb().save(cats / "img.webp")
    rgb().save(cats / "UPPER.JPG", format="JPEG")
    rgb().save(cats / "png_named.jpg", format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb((24, 12)).save(cats / "exif_rotated.jpg", exif=exif)
    rgb().save(cats / "with space 한국어 🐱.png")
    rgb().save(cats / "-dash.png")
    rgb().save(cats / "nested" / "deeper" / "nested.png")
    rgb().save(cats / "dup_a.png")
    shutil.copyfile(cats / "dup_a.png", cats / "dup_b.png")
    rgb().save(cats / "conflict.png")
    shutil.copyfile(cats / "conflict.png", dogs / "conflict.png")
    for i in range(5):
        noisy("RGB", (20, 16), (50, 40, 30), rng).save(dogs / f"d{i}.png")
    os.symlink(dogs / "d0.png", cats / "link_to_dog.png")
    # broken files
    (cats / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    rgb((64, 64)).save(buf, "JPEG")
    (cats / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (cats / "text.png").write_text("this is not a picture\n")
    Image.new("1", (12000, 12000)).save(cats / "bomb.png")   # ~18 KB on disk, 144 Mpx decoded
    os.symlink("no-such-file.png", cats / "dangling.png")
    os.symlink("..", cats / "nested" / "loop")                  # cats/nested/loop -> cats
    for name in JUNK:
        (root / name).write_bytes(b"\x00\x05Bud1 junk")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("messy") / "data")


def scan_json(data: Path) -> dict:
    # a real process, with a timeout: a symlink loop that is walked forever fails here instead of hanging
    proc = subprocess.run([sys.executable, "-m", "imgclf", "scan", str(data), "--format", "json"],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_scan_reports_every_file_with_the_right_reason(corpus):
    before = tree_digest(corpus)
    report = scan_json(corpus)
    assert report["usable"] is True and report["verdict"] == "ok"
    assert report["class_names"] == ["cats", "dogs"]                 # the empty folder is not a class
    assert report["empty_classes"] == ["empty_class"]
    assert report["splits"]["."]["per_class"] == {"cats": len(GOOD_CATS), "dogs": len(GOOD_DOGS)}

    problems = [(os.path.relpath(p["path"], corpus), p["reason"]) for p in report["problems"]]
    reasons = dict(problems)
    for name, word in BROKEN.items():
        assert word in reasons.get(name, ""), (name, reasons.get(name))
    for name in JUNK:                                                 # ignored: neither used nor reported
        assert name not in reasons
    # content checks: exact duplicate inside a class; the same content under two classes (a plain copy, and a
    # file symlink that points into the other class)
    dup = [(p, r) for p, r in problems if p in ("cats/dup_a.png", "cats/dup_b.png")]
    assert len(dup) == 1 and dup[0][1].startswith("duplicate of") and "dup_" in dup[0][1]
    for pair in (("cats/conflict.png", "dogs/conflict.png"), ("cats/link_to_dog.png", "dogs/d0.png")):
        hits = [(p, r) for p, r in problems if p in pair]
        assert len(hits) == 1 and "label conflict" in hits[0][1], problems
        other = pair[1] if hits[0][0] == pair[0] else pair[0]
        assert os.path.basename(other) in hits[0][1]
    # nothing else is reported: every usable image of every kind was accepted
    assert {p for p, _ in problems} <= set(BROKEN) | {"cats/dup_a.png", "cats/dup_b.png", "cats/conflict.png",
                                                      "dogs/conflict.png", "cats/link_to_dog.png", "dogs/d0.png"}
    modes = dict(map(tuple, report["modes"]))
    for mode in ("L", "RGBA", "P", "CMYK", "I;16", "RGB"):
        assert mode in modes, modes
    assert tree_digest(corpus) == before                                # scan changes nothing


def test_scan_table_format(corpus):
    r = cli("scan", corpus)
    assert r.exit_code == 0, r.output
    assert "problem files" in r.stdout and "cats" in r.stdout and "dogs" in r.stdout
    assert "empty_class" in r.stderr


def test_scan_split_root_reports_leakage(tmp_path):
    root = tmp_path / "splitroot"
    make_tree(root / "train", {"a": 5, "b": 5}, seed=1)
    make_tree(root / "test", {"a": 2, "b": 2}, seed=2)
    shutil.copyfile(root / "train" / "a" / "img_001.png", root / "test" / "a" / "leaked.png")
    r = cli("scan", root, "--format", "json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["split_root"] is True
    assert report["splits"]["train"]["per_class"] == {"a": 5, "b": 5}
    assert report["splits"]["test"]["per_class"] == {"a": 3, "b": 2}
    leaks = [p for p in report["problems"] if "leakage" in p["reason"]]
    assert len(leaks) == 1
    assert {os.path.basename(leaks[0]["path"]), os.path.basename(leaks[0]["reason"].split("same content as ")[1]
                                                                  .split(" ")[0])} == {"img_001.png", "leaked.png"}


@pytest.mark.parametrize("case, words", [
    ("missing", ["folder not found"]),
    ("empty", ["no class folders"]),
    ("one class", ["only one class"]),
    ("no usable images", ["no usable images"]),
])
def test_scan_unusable_data_is_a_one_line_error(tmp_path, case, words):
    data = tmp_path / "data set"
    if case == "empty":
        data.mkdir()
    elif case == "one class":
        make_tree(data, {"only": 3})
    elif case == "no usable images":
        for cls in ("a", "b"):
            (data / cls).mkdir(parents=True)
            (data / cls / "x.png").write_bytes(b"")
    r = cli("scan", data, "--format", "json")
    line = error_line(r)
    assert str(data) in line
    for w in words:
        assert w in line


# --------------------------------------------------------------------- train and predict on the corpus

@pytest.fixture(scope="module")
def corpus_model(corpus, tmp_path_factory):
    registry = tmp_path_factory.mktemp("corpus-registry")
    r = cli("train", corpus, "--registry", registry, "--arch", "mlp", "--epochs", 2, "--image-size", 16,
            "--patience", 0, "--val-split", 0.2, "--name", "corpus", "--format", "json")
    return r, registry


def test_train_skips_each_bad_file_with_a_warning_and_succeeds(corpus, corpus_model):
    r, registry = corpus_model
    assert r.exit_code == 0, r.output
    warnings = [l for l in r.stderr.splitlines() if l.startswith("warning:")]
    for name, word in BROKEN.items():
        hits = [l for l in warnings if os.path.basename(name) in l]
        assert len(hits) == 1 and word in hits[0], (name, hits)
    for name in JUNK + GOOD_CATS + GOOD_DOGS:
        assert not any(f"{name} " in l or f"{name}:" in l for l in warnings), name
    meta = json.loads((registry / "corpus" / "1" / "metadata.json").read_text())
    assert meta["class_names"] == ["cats", "dogs"]
    assert meta["channels"] == 3                                  # mixed modes: colour
    used = meta["dataset"]["train"]["images"] + meta["dataset"]["val"]["images"]
    assert used == len(GOOD_CATS) + len(GOOD_DOGS)
    assert meta["dataset"]["skipped"] == len(BROKEN)


def test_predict_on_every_corpus_file(corpus, corpus_model, monkeypatch):
    _, registry = corpus_model
    names = GOOD_CATS + GOOD_DOGS + list(BROKEN) + ["cats/Thumbs.db"]
    r = cli("predict", "-m", "corpus", "--registry", registry, "--backend", "keras", "--format", "json",
            "--", *[corpus / n for n in names])
    assert r.exit_code == 1                                       # some images failed ...
    rows = json.loads(r.stdout)
    assert [row["path"] for row in rows] == [str(corpus / n) for n in names]   # ... the rest were classified
    for row, name in zip(rows, names):
        if name in BROKEN:
            assert row["label"] is None and BROKEN[name] in row["error"], row
        elif name.endswith("Thumbs.db"):
            assert row["label"] is None and row["error"]
        else:
            assert row["error"] is None and row["label"] in ("cats", "dogs"), row
    assert "could not be classified" in r.stderr

    # a name starting with '-', given relative to the working folder after `--`
    monkeypatch.chdir(corpus / "cats")
    r = cli("predict", "-m", "corpus", "--registry", registry, "--backend", "keras", "--format", "jsonl",
            "--", "-dash.png", "with space 한국어 🐱.png")
    assert r.exit_code == 0, r.output
    assert [json.loads(l)["path"] for l in r.stdout.splitlines()] == ["-dash.png", "with space 한국어 🐱.png"]


def test_predict_on_the_corpus_folder_walks_it_once(corpus, corpus_model):
    _, registry = corpus_model
    r = cli("predict", "-m", "corpus", "--registry", registry, "--backend", "keras", "--format", "jsonl", corpus)
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    paths = [os.path.relpath(row["path"], corpus) for row in rows]
    assert len(paths) == len(set(paths))                          # the symlink loop is not followed twice
    assert set(GOOD_CATS + GOOD_DOGS) <= set(paths)
    assert not set(paths) & {"cats/._x.png", "cats/.DS_Store", "cats/notes.txt"}
    failed = {os.path.relpath(row["path"], corpus) for row in rows if row["error"]}
    assert failed == set(BROKEN)
    assert r.exit_code == 1
