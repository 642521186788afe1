"""Run a model on image files: Keras or ONNX backend, both reading the preprocessing spec and the class
names FROM THE MODEL'S METADATA. Images are decoded in parallel threads while the model runs on the
batch before, and results stream out in input order as soon as each batch is done. The ONNX path never imports TensorFlow.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np

from imgclf.errors import ImageError, UsageError
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

    A reader thread takes paths from `paths` as they come (a slow stdin included) and hands each to a
    pool of decoding threads at once; the model runs on whatever is decoded when the oldest waiting
    image is ready, up to `batch_size` images. So a folder runs in full batches while decoding goes on
    during inference, and a path written to an open stdin gets its result without waiting for more.
    At most a few batches are read ahead: memory stays bounded for any number of paths."""
    top_k = max(1, min(top_k, len(clf.class_names)))
    spec = clf.spec
    batch_size = max(1, int(batch_size))

    def load(p):
        try:
            return load_image(p, spec), None
        except ImageError as e:
            return None, e.reason

    pool = ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1))
    pending: "queue.Queue" = queue.Queue(maxsize=4 * batch_size)  # read-ahead bound
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        try:
            for p in paths:
                if stop.is_set() or not put((p, pool.submit(load, p))):
                    return
            put(done)
        except BaseException as e:  # an error while listing inputs reaches the consumer, in order
            put(e)

    # a daemon thread: a reader blocked on an open stdin must not keep the process alive
    threading.Thread(target=reader, name="imgclf-predict-reader", daemon=True).start()

    def run(batch):
        loaded = [(p, f.result()) for p, f in batch]
        good = [(i, arr) for i, (_, (arr, err)) in enumerate(loaded) if err is None]
        probs = clf(np.stack([a for _, a in good])) if good else None
        by_index = {i: probs[k] for k, (i, _) in enumerate(good)}
        for i, (p, (_, err)) in enumerate(loaded):
            if err is not None:
                yield {"path": p, "label": None, "confidence": None, "top_k": [], "error": err}
            else:
                yield _row(p, by_index[i], clf.class_names, top_k)

    try:
        finished = False
        while not finished:
            head = pending.get()
            if head is done:
                break
            if isinstance(head, BaseException):
                raise head
            head[1].result()  # wait for the oldest image; meanwhile more paths arrive and decode
            batch = [head]
            tail = None
            while len(batch) < batch_size:
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    break
                if item is done or isinstance(item, BaseException):
                    tail = item
                    break
                batch.append(item)
            yield from run(batch)
            if tail is done:
                finished = True
            elif tail is not None:
                raise tail
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
