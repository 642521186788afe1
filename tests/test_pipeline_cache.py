"""The pixel cache (data/pipeline.decode): keyed by file content and preprocessing spec, in RAM or streamed."""
from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

from imgclf.data.pipeline import decode, make_dataset
from imgclf.preprocessing import PreprocessingSpec


def _spec(size=8):
    return PreprocessingSpec(image_size=(size, size), channels=1)


def _tree(root, n=6, ext="png"):
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"img{i}.{ext}"
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(p)
        paths.append(str(p))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths.insert(2, str(root / "broken.png"))
    return paths


def test_second_decode_comes_from_the_cache_with_the_same_pixels(tmp_path):
    paths = _tree(tmp_path / "data")
    labels = list(range(len(paths)))
    first = decode(paths, labels, _spec(), cache_dir=tmp_path / "cache")
    second = decode(paths, labels, _spec(), cache_dir=tmp_path / "cache")
    assert not first.from_cache and second.from_cache
    assert np.array_equal(first.pixels, second.pixels) and first.paths == second.paths
    assert list(second.labels) == [0, 1, 3, 4, 5, 6]                      # the broken file (label 2) dropped
    assert [(e.path, e.reason) for e in second.problems] == [(e.path, e.reason) for e in first.problems]
    assert second.problems[0].path.endswith("broken.png")


def test_edited_content_invalidates_the_cache_even_with_the_same_size_and_mtime(tmp_path):
    paths = _tree(tmp_path / "data", ext="bmp")  # uncompressed: an edit keeps the file size
    decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache")
    target = paths[0]
    st = os.stat(target)
    before = open(target, "rb").read()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(target)   # white instead of black
    after = open(target, "rb").read()
    assert len(after) == len(before) and after != before
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))         # same size, same mtime, other pixels
    again = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache")
    assert not again.from_cache
    assert again.pixels[0].min() == 255


def test_touch_or_a_copied_folder_reuses_the_cache_and_reports_current_paths(tmp_path):
    paths = _tree(tmp_path / "data")
    decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache")
    os.utime(paths[0])                                             # new mtime, same content
    assert decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache").from_cache
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    moved = [p.replace(str(tmp_path / "data"), str(tmp_path / "moved")) for p in paths]
    res = decode(moved, [0] * len(moved), _spec(), cache_dir=tmp_path / "cache")
    assert res.from_cache
    assert res.paths == [p for p in moved if not p.endswith("broken.png")]
    assert res.problems[0].path == str(tmp_path / "moved" / "broken.png")


def test_another_spec_decodes_again(tmp_path):
    paths = _tree(tmp_path / "data")
    decode(paths, [0] * len(paths), _spec(8), cache_dir=tmp_path / "cache")
    other = decode(paths, [0] * len(paths), _spec(4), cache_dir=tmp_path / "cache")
    assert not other.from_cache and other.pixels.shape == (6, 4, 4, 1)


def test_over_budget_streams_from_a_memory_mapped_file_with_the_same_pixels(tmp_path):
    paths = _tree(tmp_path / "data")
    in_ram = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "c1")
    streamed = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "c2", memory_budget=64)
    again = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "c2", memory_budget=64)
    assert isinstance(streamed.pixels, np.memmap) and isinstance(again.pixels, np.memmap) and again.from_cache
    assert np.array_equal(np.asarray(streamed.pixels), in_ram.pixels)
    assert np.array_equal(np.asarray(again.pixels), in_ram.pixels)


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    paths = _tree(tmp_path / "data")
    first = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache")
    for f in (tmp_path / "cache").glob("*.json"):
        f.write_text("{not json")
    again = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache")
    assert not again.from_cache and np.array_equal(again.pixels, first.pixels)


def test_decoding_in_threads_gives_the_same_pixels_problems_and_progress(tmp_path, monkeypatch):
    """Small images are decoded in one thread, slow ones in several (PARALLEL_DECODE_MIN_S): both ways give
    the same rows, the same problems in place, and progress up to the total."""
    import imgclf.data.files as PL

    root = tmp_path / "data"
    root.mkdir()
    paths = []
    for i in range(150):
        p = root / f"img{i:03d}.png"
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(p)
        paths.append(str(p))
    for k in (5, 70, 149):
        (root / f"broken{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        paths.insert(k, str(root / f"broken{k}.png"))
    runs = {}
    for name, threshold in (("one thread", float("inf")), ("threads", 0.0)):
        monkeypatch.setattr(PL, "PARALLEL_DECODE_MIN_S", threshold)
        seen = []
        d = decode(paths, list(range(len(paths))), _spec(), workers=3, progress=seen.append)
        runs[name] = d
        assert seen[-1] == len(paths) and seen == sorted(seen)
    a, b = runs["one thread"], runs["threads"]
    assert np.array_equal(a.pixels, b.pixels) and a.paths == b.paths and list(a.labels) == list(b.labels)
    assert [e.path for e in b.problems] == [paths[5], paths[70], paths[149]]
    assert [int(row[0, 0, 0]) for row in b.pixels] == list(range(150))


def test_map_in_order_keeps_the_order_in_one_thread_and_in_several(monkeypatch):
    import threading

    import imgclf.data.files as PL

    items = list(range(200))
    for threshold, many_threads in ((float("inf"), False), (0.0, True)):
        monkeypatch.setattr(PL, "PARALLEL_DECODE_MIN_S", threshold)
        threads = set()

        def square(x):
            threads.add(threading.get_ident())
            return x * x

        assert PL.map_in_order(square, items, workers=3) == [x * x for x in items]
        assert (len(threads) > 1) == many_threads


import pytest  # noqa: E402


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other shape", "empty"])
@pytest.mark.parametrize("budget", [None, 64], ids=["in RAM", "memory-mapped"])
def test_a_damaged_npy_pixel_file_is_rebuilt(tmp_path, damage, budget):
    paths = _tree(tmp_path / "data")
    kw = {} if budget is None else {"memory_budget": budget}
    first = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache", **kw)
    expected = np.array(first.pixels)
    (npy,) = (tmp_path / "cache").glob("*.npy")
    raw = npy.read_bytes()
    if damage == "truncated":                  # a copy or a disk that gave out half way
        npy.write_bytes(raw[: len(raw) - 50])
    elif damage == "garbage":
        npy.write_bytes(b"not a numpy file" + raw[16:])
    elif damage == "other shape":              # a valid .npy file, of pixels of another size
        np.save(npy, np.zeros((len(expected), 4, 4, 1), np.uint8))
    else:
        npy.write_bytes(b"")
    again = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache", **kw)
    assert not again.from_cache
    assert np.array_equal(np.asarray(again.pixels), expected)
    assert [e.path for e in again.problems] == [str(tmp_path / "data" / "broken.png")]
    third = decode(paths, [0] * len(paths), _spec(), cache_dir=tmp_path / "cache", **kw)
    assert third.from_cache and np.array_equal(np.asarray(third.pixels), expected)   # the rebuilt file is good


def _passes(ds, n, batch, passes):
    """The labels of `passes` epochs from a repeating dataset, one list per epoch."""
    it, out = iter(ds), []
    for _ in range(passes):
        out.append([int(v) for _ in range(-(-n // batch)) for v in next(it)[1].numpy()])
    return out


def test_a_repeating_train_set_gives_every_image_once_an_epoch_in_a_new_seeded_order():
    """model.fit with steps_per_epoch keeps one iterator for the whole fit (train.fit_phase): each pass is
    still one epoch, every image exactly once, reshuffled, and the same for the same seed."""
    pixels = np.zeros((10, 2, 2, 1), np.uint8)
    labels = np.arange(10, dtype=np.int32)  # a label per image, to see which images an epoch drew
    first = _passes(make_dataset(pixels, labels, 4, shuffle=True, seed=3, repeat=True), 10, 4, 3)
    again = _passes(make_dataset(pixels, labels, 4, shuffle=True, seed=3, repeat=True), 10, 4, 3)
    assert all(sorted(epoch) == list(range(10)) for epoch in first)
    assert len({tuple(epoch) for epoch in first}) == 3
    assert first == again
    # not repeating: one pass, then the dataset ends (validation and test)
    once = make_dataset(pixels, labels, 4)
    assert sum(len(y) for _, y in once) == 10 and sum(len(y) for _, y in once) == 10
