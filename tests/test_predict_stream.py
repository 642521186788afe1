"""predict's streaming engine (imgclf.predict.predict_batches): input order kept across batches, bad
images in place, the parallel-decoding path giving the same rows, an error from the list of inputs
arriving after the rows before it, and a path on an open stdin answered without more input."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading

import numpy as np
import pytest

import imgclf.data.files as PL
import imgclf.predict as P
from conftest import COLOURS, child_env, noisy
from imgclf.preprocessing import PreprocessingSpec


class MeanColour:
    """A stand-in classifier: probabilities from the mean red/green/blue of each image."""

    backend = "test"

    def __init__(self):
        self.spec = PreprocessingSpec(image_size=(8, 8), channels=3)
        self.class_names = ["blue", "green", "red"]
        self.batches = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        mean = batch.astype(np.float64).mean(axis=(1, 2))   # (n, 3) in RGB order
        scores = mean[:, [2, 1, 0]]                          # blue, green, red
        return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def stream_images(tmp_path_factory):
    """100 images of known colour, with a broken file and a missing one among them."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(5)
    names = list(COLOURS)
    items = []
    for i in range(100):
        colour = names[(i * 7) % 3]
        path = root / f"{i:03d}.png"
        noisy("RGB", (12, 10), COLOURS[colour], rng, spread=10).save(path)
        items.append((str(path), colour))
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    items.insert(37, (str(broken), None))
    items.insert(64, (str(root / "missing.png"), None))
    return items


def _labels(rows):
    return [(r["path"], r["label"]) for r in rows]


def test_rows_come_in_input_order_across_batches(stream_images):
    clf = MeanColour()
    batches = list(P.predict_batches(clf, (p for p, _ in stream_images), batch_size=16))
    rows = [r for b in batches for r in b]
    assert _labels(rows) == stream_images
    assert all(len(b) <= 16 for b in batches)
    assert sum(clf.batches) == 100                      # the two bad files never reach the model
    bad = {r["path"]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {stream_images[37][0], stream_images[64][0]}
    assert "not found" in bad[stream_images[64][0]]
    good = [r for r in rows if not r["error"]]
    assert all(r["confidence"] == r["top_k"][0]["probability"] and len(r["top_k"]) == 3 for r in good)
    assert all(r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] >= r["top_k"][2]["probability"]
               for r in good)


def test_parallel_decoding_gives_the_same_rows(stream_images, monkeypatch):
    serial = [r for b in P.predict_batches(MeanColour(), [p for p, _ in stream_images], batch_size=16,
                                           workers=1) for r in b]
    monkeypatch.setattr(PL, "PARALLEL_DECODE_MIN_S", 0.0)  # decode every batch with 3 threads
    parallel = [r for b in P.predict_batches(MeanColour(), [p for p, _ in stream_images], batch_size=16,
                                             workers=3) for r in b]
    assert parallel == serial
    assert _labels(parallel) == stream_images


def test_an_error_listing_the_inputs_comes_after_the_rows_before_it(stream_images):
    def paths():
        for p, _ in stream_images[:20]:
            yield p
        raise OSError("input list went away")

    seen = []
    with pytest.raises(OSError, match="input list went away"):
        for batch in P.predict_batches(MeanColour(), paths(), batch_size=8):
            seen.extend(batch)
    assert _labels(seen) == stream_images[:20]


def test_a_path_on_an_open_stdin_is_answered_without_more_input(exported, tmp_path):
    """`tail -f list | imgclf predict -`: the result for a path comes while stdin is still open."""
    rng = np.random.default_rng(8)
    (path, colour), second = [(str(tmp_path / f"{c}.png"), c) for c in ("green", "red")]
    for p, c in ((path, colour), second):
        noisy("RGB", (24, 18), COLOURS[c], rng).save(p)
    proc = subprocess.Popen([sys.executable, "-m", "imgclf", "predict", "-", "--format", "jsonl", "--model",
                             "colours", "--registry", str(exported.registry)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    lines: "queue.Queue" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    try:
        proc.stdin.write(path + "\n")
        proc.stdin.flush()
        first = json.loads(lines.get(timeout=120))       # stdin is still open here
        assert (first["path"], first["label"]) == (path, colour)
        proc.stdin.write(second[0] + "\n")
        proc.stdin.flush()
        later = json.loads(lines.get(timeout=120))
        assert (later["path"], later["label"]) == second
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
