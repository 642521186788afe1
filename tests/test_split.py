"""`imgclf split SRC DEST`: stratified, seeded, nothing lost or duplicated, SRC never touched."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import cli, error_line, make_tree, tree_digest

SPLITS = ("train", "val", "test")


def manifest(dest: Path):
    with open(dest / "split_manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def placed(dest: Path):
    """(split, class, path below the class) of every file in DEST/train|val|test."""
    out = []
    for split in SPLITS:
        for p in sorted((dest / split).rglob("*")) if (dest / split).is_dir() else []:
            if p.is_file() or p.is_symlink():
                rel = p.relative_to(dest / split)
                out.append((split, rel.parts[0], Path(*rel.parts[1:]).as_posix()))
    return out


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def src(tmp_path):
    return make_tree(tmp_path / "src", {"a": 20, "b": 10, "c": 5}, mode="L", seed=3)


def test_split_counts_are_stratified_per_class(src, tmp_path):
    r = cli("split", src, tmp_path / "out", "--val", 0.2, "--test", 0.1, "--format", "json")
    assert r.exit_code == 0, r.output
    counts = json.loads(r.stdout)["counts"]
    # round(n * fraction) per class; class c (5 images) gets its 0.5 test image rounded up to 1
    assert counts == {"train": {"a": 14, "b": 7, "c": 3}, "val": {"a": 4, "b": 2, "c": 1},
                      "test": {"a": 2, "b": 1, "c": 1}}
    on_disk = Counter((s, c) for s, c, _ in placed(tmp_path / "out"))
    assert {(s, c): n for s in SPLITS for c, n in counts[s].items()} == dict(on_disk)


def test_every_image_lands_in_exactly_one_split_and_the_manifest_says_where(src, tmp_path):
    dest = tmp_path / "out"
    assert cli("split", src, dest).exit_code == 0
    sources = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))
    rows = manifest(dest)
    assert sorted(r["source"] for r in rows) == sources          # none lost, none twice
    assert set(rows[0]) == {"source", "split", "class", "dest"}
    files = placed(dest)
    assert len(files) == len(sources)
    for row in rows:
        assert row["split"] in SPLITS
        assert row["class"] == row["source"].split("/")[0]
        target = dest / row["dest"]
        assert target.parts[-3:-1] == (row["split"], row["class"])
        assert sha(target) == sha(src / row["source"])         # copied, unchanged


def test_table_output_names_classes_and_totals(src, tmp_path):
    r = cli("split", src, tmp_path / "out")
    assert r.exit_code == 0
    for word in ("class", "train", "val", "test", "total", "a", "b", "c"):
        assert word in r.stdout


def test_same_seed_same_split_other_seed_other_split(src, tmp_path):
    for name, seed in (("one", 7), ("two", 7), ("three", 8)):
        assert cli("split", src, tmp_path / name, "--seed", seed).exit_code == 0
    key = lambda d: sorted((r["source"], r["split"]) for r in manifest(tmp_path / d))  # noqa: E731
    assert key("one") == key("two")
    assert key("one") != key("three")


def test_refuses_non_empty_dest_without_force(src, tmp_path):
    dest = tmp_path / "busy dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    r = cli("split", src, dest)
    line = error_line(r)
    assert "busy dest" in line and "--force" in line
    assert not (dest / "train").exists()
    r = cli("split", src, dest, "--force")
    assert r.exit_code == 0, r.output
    assert (dest / "keep.txt").read_text() == "mine"          # --force replaces only train/val/test
    assert len(manifest(dest)) == 35


def test_force_replaces_an_earlier_split(src, tmp_path):
    dest = tmp_path / "out"
    assert cli("split", src, dest, "--seed", 1).exit_code == 0
    assert cli("split", src, dest, "--seed", 2, "--force").exit_code == 0
    assert len(placed(dest)) == 35                              # the old files are gone, not mixed in


@pytest.mark.parametrize("mode", ["copy", "symlink", "hardlink"])
def test_modes_leave_src_untouched(src, tmp_path, mode):
    before = tree_digest(src)
    dest = tmp_path / "out"
    r = cli("split", src, dest, "--mode", mode)
    assert r.exit_code == 0, r.output
    assert tree_digest(src) == before
    for row in manifest(dest):
        target, source = dest / row["dest"], src / row["source"]
        if mode == "symlink":
            assert target.is_symlink() and Path(os.readlink(target)) == source.resolve()
        elif mode == "hardlink":
            assert not target.is_symlink() and target.stat().st_ino == source.stat().st_ino
        else:
            assert not target.is_symlink() and target.stat().st_ino != source.stat().st_ino
        assert sha(target) == sha(source)


def test_unknown_mode_is_refused(src, tmp_path):
    r = cli("split", src, tmp_path / "out", "--mode", "move")
    assert r.exit_code == 2 and "Invalid value for '--mode'" in r.stderr and "'move' is not one of" in r.stderr
    assert not (tmp_path / "out").exists()
    from imgclf.data.split import split_dataset
    from imgclf.errors import UsageError
    with pytest.raises(UsageError, match="--mode must be one of copy, symlink, hardlink, got 'move'"):
        split_dataset(src, tmp_path / "out", mode="move")


def test_small_classes_still_get_a_val_and_a_test_image(tmp_path):
    src = make_tree(tmp_path / "src", {"big": 30, "three": 3, "four": 4}, seed=4)
    r = cli("split", src, tmp_path / "out", "--val", 0.1, "--test", 0.1, "--format", "json")
    counts = json.loads(r.stdout)["counts"]
    for cls in ("three", "four"):
        assert counts["val"][cls] == 1 and counts["test"][cls] == 1 and counts["train"][cls] >= 1
    assert counts["val"]["big"] == 3 and counts["test"]["big"] == 3


def test_nested_subfolders_keep_their_class_and_path(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 6, "b": 6}, seed=5)
    (src / "a" / "deep" / "er").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(src / "a" / "deep" / "er" / "x.png")
    dest = tmp_path / "out"
    assert cli("split", src, dest).exit_code == 0
    row = next(r for r in manifest(dest) if r["source"] == "a/deep/er/x.png")
    assert row["class"] == "a" and row["dest"] == f"{row['split']}/a/deep/er/x.png"
    assert (dest / row["dest"]).is_file()


def test_bad_files_are_skipped_with_a_warning_not_copied(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 5, "b": 5}, seed=6)
    (src / "a" / "broken.png").write_bytes(b"not a png")
    r = cli("split", src, tmp_path / "out")
    assert r.exit_code == 0
    assert "broken.png" in r.stderr and "warning" in r.stderr
    assert all("broken" not in row["source"] for row in manifest(tmp_path / "out"))


@pytest.mark.parametrize("case", ["missing", "empty", "one class", "split root", "dest inside src"])
def test_split_errors(tmp_path, case):
    src = tmp_path / "src"
    dest = tmp_path / "out"
    if case == "empty":
        src.mkdir()
    elif case == "one class":
        make_tree(src, {"only": 4})
    elif case == "split root":
        make_tree(src / "train", {"a": 2, "b": 2})
        make_tree(src / "val", {"a": 1, "b": 1})
    elif case == "dest inside src":
        make_tree(src, {"a": 3, "b": 3})
        dest = src / "out"
    before = tree_digest(src) if src.exists() else None
    line = error_line(cli("split", src, dest))
    assert str(src) in line or str(dest) in line
    if case == "one class":
        assert "one class" in line
    if before is not None:
        assert tree_digest(src) == before


# --------------------------------------------------------------------------------- property test

def _draw_tree(root: Path, counts, bad_in):
    for i, n in enumerate(counts):
        d = root / f"class{i}"
        d.mkdir(parents=True)
        for k in range(n):
            sub = d / "sub" if k % 4 == 3 else d   # some images sit in a nested folder
            sub.mkdir(exist_ok=True)
            Image.new("L", (4, 4), (i * 50 + k) % 256).save(sub / f"{k}.png")
        if i in bad_in:
            (d / "corrupt.png").write_bytes(b"\x89PNG but no")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(1, 15), min_size=2, max_size=4),
       val=st.sampled_from([0.0, 0.1, 0.2, 0.3]), test=st.sampled_from([0.0, 0.1, 0.25]),
       seed=st.integers(0, 2 ** 16), bad_in=st.sets(st.integers(0, 3), max_size=2))
def test_split_property_union_disjoint_stratified_deterministic(counts, val, test, seed, bad_in):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        _draw_tree(src, counts, bad_in)
        usable = {p.relative_to(src).as_posix() for p in src.rglob("*.png") if p.name != "corrupt.png"}
        r = cli("split", src, root / "a", "--val", val, "--test", test, "--seed", seed, "--format", "json")
        assert r.exit_code == 0, r.output
        rows = manifest(root / "a")
        sources = [row["source"] for row in rows]
        assert set(sources) == usable                       # the union is the usable input
        assert len(sources) == len(set(sources))            # disjoint: each image once
        assert len(placed(root / "a")) == len(usable)       # and nothing else on disk
        per = Counter((row["class"], row["split"]) for row in rows)
        for i, n in enumerate(counts):
            cls = f"class{i}"
            n_val, n_test, n_train = per[(cls, "val")], per[(cls, "test")], per[(cls, "train")]
            assert n_train + n_val + n_test == n
            assert n_train >= 1
            assert abs(n_val - n * val) <= 1 and abs(n_test - n * test) <= 1
            if val > 0 and test > 0 and n >= 3:
                assert n_val >= 1 and n_test >= 1
        assert json.loads(r.stdout)["counts"] == {
            s: {f"class{i}": per[(f"class{i}", s)] for i in range(len(counts))} for s in SPLITS}
        again = cli("split", src, root / "b", "--val", val, "--test", test, "--seed", seed)
        assert again.exit_code == 0
        assert sorted(map(tuple, (r.values() for r in manifest(root / "b")))) == \
            sorted(map(tuple, (r.values() for r in rows)))
