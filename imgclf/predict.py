"""Run a model on image files: Keras or ONNX backend, both reading the preprocessing spec and the class
names FROM THE MODEL'S METADATA. Images are decoded in parallel threads while the model runs on the
batch before, and results stream out in input order as soon as each batch is done. The ONNX path
never imports TensorFlow.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np

from imgclf.errors import ImageError, UsageError
from imgclf.data.pipeline import default_workers
from imgclf.preprocessing import PreprocessingSpec, load_image
from imgclf.registry import ModelRef

BACKENDS = ("auto", "keras", "onnx")


class Classifier:
    """probabilities = classifier(uint8 batch of spec.shape images)."""

    backend = "?"

    def __init__(self, ref: ModelRef):
        self.ref = ref
        self.spec = PreprocessingSpec.from_dict(ref.metadata["preprocessing"])
        self.class_names: List[str] = list(ref.metadata["class_names"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxClassifier(Classifier):
    backend = "onnx"

    def __init__(self, ref: ModelRef, threads: Optional[int] = None):
        super().__init__(ref)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        # no busy-waiting between batches: the decoding threads need those cores (about 25% less CPU
        # for a folder of small images, bench/predict_throughput.py)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(ref.onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]


class KerasClassifier(Classifier):
    backend = "keras"

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        if ref.onnx_only:
            raise UsageError(f"{ref.onnx_path}: a standalone .onnx file runs with --backend onnx only")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        self.model = keras.models.load_model(ref.keras_path, compile=False, safe_mode=True)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # model(x) on a batch: cheaper than model.predict for small inputs, and uses every core
        return np.asarray(self.model(batch.astype(np.float32, copy=False), training=False))


def load_classifier(ref: ModelRef, backend: str = "auto") -> Classifier:
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnx" or (backend == "auto" and ref.onnx_path.is_file()):
        if not ref.onnx_path.is_file():
            raise UsageError(f"model {ref.label} has no ONNX export; run `imgclf export {ref.label}` first "
                             "or use --backend keras")
        return OnnxClassifier(ref)
    return KerasClassifier(ref)


def expand_inputs(items: Sequence[str], stdin=None) -> Iterator[str]:
    """Files as given, folders recursively (image files only, sorted), '-' = paths from stdin, one a line."""
    from imgclf.data.scan import is_image_name, walk_files

    for item in items:
        if item == "-":
            for line in (stdin or sys.stdin):
                line = line.rstrip("\r\n")
                if line:
                    yield line
        elif os.path.isdir(item):
            for f in walk_files(item):
                if is_image_name(os.path.basename(f)):
                    yield f
        else:
            yield item


def predict_probabilities(clf: Classifier, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = [clf(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(clf.class_names)), np.float32)


def _row(path: str, probs: np.ndarray, class_names: Sequence[str], top_k: int) -> dict:
    order = np.argsort(-probs, kind="stable")[:top_k]
    best = int(order[0])
    return {"path": path, "label": class_names[best], "confidence": round(float(probs[best]), 6),
            "top_k": [{"label": class_names[int(i)], "probability": round(float(probs[int(i)]), 6)}
                      for i in order], "error": None}


def predict_stream(clf: Classifier, paths: Iterable[str], top_k: int = 3, batch_size: int = 32,
                   workers: Optional[int] = None) -> Iterator[dict]:
    """Yield one result per path, in input order; an unusable image yields a row with `error` set.

    A reader thread takes paths from `paths` as they come (a slow stdin included); `workers` decoding
    threads each take a run of consecutive waiting paths (up to batch_size / (2 * workers)) and decode
    it. The model runs as soon as the oldest image is decoded, on it and the consecutive ones already
    decoded (up to `batch_size`), while decoding goes on: batches are full when decoding keeps ahead of
    the model, and a path written to an open stdin gets its result without waiting for more input.
    Decoding in runs rather than one image per task cuts the hand-offs between threads: one per image
    cost about as much CPU as decoding a 28x28 PNG (~0.1 ms on a 2-core machine;
    bench/predict_throughput.py). At most 4 batches are read ahead: memory stays bounded."""
    top_k = max(1, min(top_k, len(clf.class_names)))
    spec = clf.spec
    batch_size = max(1, int(batch_size))
    workers = workers or default_workers()
    run_length = max(1, batch_size // (2 * workers))
    room = threading.Semaphore(4 * batch_size)  # paths read but not yet yielded
    todo: "queue.Queue" = queue.Queue()         # (sequence number, path), then `end`
    end = object()
    stop = threading.Event()
    ready = threading.Condition()               # guards `results` and `state`
    results: dict = {}                          # sequence number -> (path, (pixels, error))
    state = {"total": None, "failure": None}    # how many paths there were; (seq, exception) from `paths`
    take = threading.Lock()                     # one worker at a time takes a run from `todo`

    def reader():
        seq = 0
        try:
            for p in paths:
                while not room.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                todo.put((seq, p))
                seq += 1
        except BaseException as e:  # an error while listing inputs reaches the consumer, in order
            with ready:
                state["failure"] = (seq, e)
                ready.notify_all()
        else:
            with ready:
                state["total"] = seq
                ready.notify_all()
        finally:
            todo.put(end)

    def load(p):
        try:
            return load_image(p, spec), None
        except ImageError as e:
            return None, e.reason

    def worker():
        while not stop.is_set():
            with take:
                item = todo.get()
                if item is end:
                    todo.put(end)  # for the other workers
                    return
                run = [item]
                while len(run) < run_length:
                    try:
                        item = todo.get_nowait()
                    except queue.Empty:
                        break
                    if item is end:
                        todo.put(end)
                        break
                    run.append(item)
            decoded = [(seq, p, load(p)) for seq, p in run]
            with ready:
                for seq, p, result in decoded:
                    results[seq] = (p, result)
                ready.notify_all()

    # daemon threads: a reader blocked on an open stdin must not keep the process alive
    for target in [reader] + [worker] * workers:
        threading.Thread(target=target, name="imgclf-predict", daemon=True).start()

    def classify(batch):
        good = [(i, arr) for i, (_, (arr, err)) in enumerate(batch) if err is None]
        probs = clf(np.stack([a for _, a in good])) if good else None
        by_index = {i: probs[k] for k, (i, _) in enumerate(good)}
        for i, (p, (_, err)) in enumerate(batch):
            if err is not None:
                yield {"path": p, "label": None, "confidence": None, "top_k": [], "error": err}
            else:
                yield _row(p, by_index[i], clf.class_names, top_k)

    next_seq = 0
    try:
        while True:
            with ready:
                while next_seq not in results:
                    if state["total"] is not None and next_seq >= state["total"]:
                        return
                    if state["failure"] is not None and next_seq >= state["failure"][0]:
                        raise state["failure"][1]
                    ready.wait()
                batch = []
                while next_seq in results and len(batch) < batch_size:
                    batch.append(results.pop(next_seq))
                    next_seq += 1
            yield from classify(batch)
            room.release(len(batch))
    finally:
        stop.set()
        todo.put(end)
