"""Run a model on image files: Keras or ONNX backend, both reading the preprocessing spec and the class
names FROM THE MODEL'S METADATA. A batch of images is decoded while the model runs on the batch
before (in several threads when decoding is slow, as with photos), and results stream out in input
order as soon as each batch is done. The ONNX path never imports TensorFlow.
"""
from __future__ import annotations

import csv
import json
import os
import queue
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from imgclf.calibration import apply_temperature, check_probability, temperature_of
from imgclf.config import (BACKENDS, DEFAULT_BACKEND, INFERENCE_BATCH_PIXELS, INFERENCE_BATCH_SIZE, OUTPUT_FORMATS,
                           PRECISIONS, PREDICT_BATCH_SIZE, PREDICT_PRECISION, PREDICT_TOP_K)
from imgclf.errors import DataError, ImageError, UsageError
from imgclf.data.files import InOrderMapper
from imgclf.preprocessing import load_image
from imgclf.registry import ModelRef, int8_path



class Classifier:
    """probabilities = classifier(uint8 batch of spec.shape images): calibrated with the model's temperature
    (calibration.py; T = 1 for models without one)."""

    backend = "?"

    def __init__(self, ref: ModelRef):
        self.ref = ref
        self.spec = ref.spec
        self.class_names: List[str] = list(ref.metadata["class_names"])
        self.temperature = temperature_of(ref.metadata)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.probabilities(batch, calibrated=True)

    def probabilities(self, batch: np.ndarray, calibrated: bool = True) -> np.ndarray:
        raise NotImplementedError


class OnnxClassifier(Classifier):
    backend = "onnx"

    def __init__(self, ref: ModelRef, threads: Optional[int] = None, path: Optional[Path] = None):
        super().__init__(ref)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        # no busy-waiting between batches: the decoding threads need those cores (about 25% less CPU
        # for a folder of small images, bench/predict_throughput.py)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path or ref.onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        # exports since calibration hold T inside the graph (recorded in their metadata); older ones give
        # uncalibrated probabilities (T = 1)
        onnx_meta = json.loads(self.session.get_modelmeta().custom_metadata_map.get("imgclf", "{}"))
        self.graph_temperature = temperature_of(onnx_meta)

    def probabilities(self, batch: np.ndarray, calibrated: bool = True) -> np.ndarray:
        out = self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]
        # the graph applied graph_temperature; softmax(log p / T) composes: T_a then T_b = T_a * T_b
        return apply_temperature(out, (self.temperature if calibrated else 1.0) / self.graph_temperature)


class KerasClassifier(Classifier):
    backend = "keras"

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        if ref.onnx_only:
            raise UsageError(f"{ref.onnx_path}: a standalone .onnx file runs with --backend onnx only")
        from imgclf.memory import load_keras_model

        self.model = load_keras_model(ref.keras_path)

    def probabilities(self, batch: np.ndarray, calibrated: bool = True) -> np.ndarray:
        # model(x) on a batch: cheaper than model.predict for small inputs, and uses every core
        out = np.asarray(self.model(batch.astype(np.float32, copy=False), training=False))
        return apply_temperature(out, self.temperature) if calibrated else out


class MirrorTTA(Classifier):
    """`--tta`: test-time augmentation around another classifier (either backend): each image's
    probabilities are the mean of the image's and its left-right mirror's, so Keras and ONNX give the same
    answer. Costs two model runs an image. Meant for models trained with flips (the pretrained default's
    augmentation); a class that a mirror turns into another (text, arrows pointing left / right) loses."""

    def __init__(self, inner: Classifier):
        self.inner, self.ref, self.spec = inner, inner.ref, inner.spec
        self.class_names, self.temperature = inner.class_names, inner.temperature
        self.backend = inner.backend

    def probabilities(self, batch: np.ndarray, calibrated: bool = True) -> np.ndarray:
        # the mean of the uncalibrated answers, then the model's temperature: predict (calibrated) and
        # evaluate (uncalibrated, calibrated afterwards) take the same path and agree
        mean = (self.inner.probabilities(batch, False)
                + self.inner.probabilities(np.ascontiguousarray(batch[:, :, ::-1]), False)) / 2
        return apply_temperature(mean, self.temperature) if calibrated else mean


def load_classifier(ref: ModelRef, backend: str = DEFAULT_BACKEND, precision: str = PREDICT_PRECISION,
                    tta: bool = False) -> Classifier:
    """The model's classifier for `backend` / `precision`; with `tta`, wrapped in MirrorTTA."""
    clf = _load_classifier(ref, backend, precision)
    return MirrorTTA(clf) if tta else clf


def _load_classifier(ref: ModelRef, backend: str, precision: str) -> Classifier:
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision != PRECISIONS[0]:  # fp32: model.onnx or model.keras
        if precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if backend == "keras":
            raise UsageError("--precision int8 runs the int8 ONNX file: use --backend onnx or auto")
        return OnnxClassifier(ref, path=int8_path(ref))
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


def predict_probabilities(clf: Classifier, pixels: np.ndarray, batch_size: int = INFERENCE_BATCH_SIZE,
                          calibrated: bool = True) -> np.ndarray:
    """Probabilities for every image, in batches of `batch_size` images, or fewer where the images are so
    large that the batch would hold more than INFERENCE_BATCH_PIXELS pixels."""
    if pixels.ndim == 4:
        batch_size = max(1, min(batch_size, INFERENCE_BATCH_PIXELS // max(1, pixels.shape[1] * pixels.shape[2])))
    out = [clf.probabilities(pixels[i:i + batch_size], calibrated) for i in range(0, len(pixels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(clf.class_names)), np.float32)


def _rows(paths: Sequence[str], probs: np.ndarray, class_names: Sequence[str], top_k: int,
          min_confidence: Optional[float] = None) -> List[dict]:
    """One result row per image, for a whole batch at once (sorting and rounding in NumPy). Below
    `min_confidence` the row abstains: label None, abstained True (confidence and top_k still given)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    best = np.take_along_axis(probs, order[:, :1], axis=1)[:, 0]
    abstained = (best < min_confidence).tolist() if min_confidence is not None else [False] * len(paths)
    top = np.round(np.take_along_axis(probs, order, axis=1).astype(np.float64), 6).tolist()
    names = [[class_names[i] for i in row] for row in order.tolist()]
    return [{"path": path, "label": None if a_ else n[0], "confidence": p[0],
             "top_k": [{"label": a, "probability": b} for a, b in zip(n, p)], "error": None, "abstained": a_}
            for path, n, p, a_ in zip(paths, names, top, abstained)]


def check_predict_args(top_k: int, batch_size: int) -> None:
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


CSV_HEADER = ["path", "label", "confidence", "top_k", "error", "abstained"]


def write_predictions(batches: Iterable[List[dict]], fmt: str, out, top_k: int) -> Tuple[int, int]:
    """Write result rows to `out` as fmt (table | json | jsonl | csv); returns (images, failed).
    jsonl and csv stream: each batch is written and flushed as soon as the model has classified it; json
    and the table need every row first."""
    if fmt not in ("jsonl", "csv"):
        rows = [r for batch in batches for r in batch]
        if rows and fmt == "json":
            out.write(json.dumps(rows, indent=2) + "\n")
        elif rows:
            from imgclf.console import print_predictions
            print_predictions(rows, top_k)
        return len(rows), sum(r["error"] is not None for r in rows)
    total = failed = 0
    encode = json.JSONEncoder(ensure_ascii=False).encode
    writer = csv.writer(out)
    for rows in batches:
        if fmt == "jsonl":
            out.write("".join([encode(r) + "\n" for r in rows]))
        else:
            if not total:
                writer.writerow(CSV_HEADER)
            writer.writerows([r["path"], r["label"] or "", "" if r["confidence"] is None else r["confidence"],
                              ";".join(f"{t['label']}:{t['probability']}" for t in r["top_k"]), r["error"] or "",
                              "true" if r["abstained"] else "false"]
                             for r in rows)
        out.flush()
        total += len(rows)
        failed += sum(r["error"] is not None for r in rows)
    return total, failed


def nothing_to_classify(images: Sequence[str]) -> DataError:
    """The error for inputs that held no image at all (a folder without images, an empty stdin)."""
    from imgclf.config import IMAGE_EXTENSIONS

    folders = [i for i in images if i != "-"]
    reasons = [f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(folders)}"] if folders else []
    reasons += ["no paths on stdin"] if "-" in images else []
    return DataError("nothing to classify: " + "; ".join(reasons))


def predict_to(out, images: Sequence[str], clf: Classifier, fmt: str, top_k: int = PREDICT_TOP_K,
               batch_size: int = PREDICT_BATCH_SIZE, min_confidence: Optional[float] = None) -> int:
    """`imgclf predict`: classify IMAGES (files, folders, '-' for stdin) and write one row per image to
    `out`; below `min_confidence` a row abstains (label None, not a failure). Returns how many images
    could not be classified; DataError when there was nothing to classify."""
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    check_predict_args(top_k, batch_size)
    check_probability("min-confidence", min_confidence)
    batches = predict_batches(clf, expand_inputs(images), top_k, batch_size, min_confidence=min_confidence)
    total, failed = write_predictions(batches, fmt, out, min(top_k, len(clf.class_names)))
    if not total:
        raise nothing_to_classify(images)
    return failed


class _Failure:
    """An exception raised while listing the inputs: re-raised by the consumer after the rows before it."""

    def __init__(self, error: BaseException):
        self.error = error


def predict_batches(clf: Classifier, paths: Iterable[str], top_k: int = PREDICT_TOP_K,
                    batch_size: int = PREDICT_BATCH_SIZE, workers: Optional[int] = None,
                    min_confidence: Optional[float] = None) -> Iterator[List[dict]]:
    """Yield lists of result rows (one per path, in input order; an unusable image gets a row with
    `error` set; one whose top probability is below `min_confidence` abstains), a list per model call:
    a writer can flush once a batch, not once a line.

    Three kinds of work overlap:
    - a reader thread takes paths from `paths` as they come (a slow stdin included), at most
      8 batches ahead, so memory stays bounded;
    - the calling thread decodes a batch of the paths waiting (all of them, up to `batch_size`) and
      builds the result rows: all the Python-heavy work stays in one thread, so it never fights
      another thread for the GIL;
    - a model thread runs the classifier (onnxruntime and TensorFlow let go of the GIL while they
      compute) on that batch while the calling thread decodes the next one.
    When decoding turns out to be slow per image (photos: `data.files.InOrderMapper`), batches are
    decoded by `workers` threads instead. The oldest batch is yielded as soon as nothing else can be
    done (no more input waiting), so a path written to an open stdin gets its result without waiting
    for more input.

    One function on purpose (~100 lines): the reader, the decoder and the model thread share the queue,
    the back-pressure counter and the stop flag, and the order of their hand-offs is the whole design;
    split into pieces it would read as four functions passing the same five objects around."""
    # long: the reader, decoder and model threads share one queue, counter and stop flag (docstring)
    check_predict_args(top_k, batch_size)
    top_k = min(top_k, len(clf.class_names))  # "top 5" of a 3-class model: all 3
    spec = clf.spec
    incoming: "queue.SimpleQueue" = queue.SimpleQueue()   # paths, then `end` or a _Failure
    end = object()
    stop = threading.Event()
    room = threading.Condition()
    ahead = [0]  # paths read but not yet taken by the consumer (guarded by `room`)
    limit = 8 * batch_size

    def reader():
        try:
            for p in paths:
                with room:
                    while ahead[0] >= limit and not stop.is_set():
                        room.wait(0.1)
                    if stop.is_set():
                        return
                    ahead[0] += 1
                incoming.put(p)
        except BaseException as e:  # an error while listing inputs reaches the consumer, in order
            incoming.put(_Failure(e))
        else:
            incoming.put(end)

    # a daemon thread: a reader blocked on an open stdin must not keep the process alive
    threading.Thread(target=reader, name="imgclf-predict-reader", daemon=True).start()

    def load(p):
        try:
            return load_image(p, spec), None
        except ImageError as e:
            return None, e.reason

    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-model")
    decode = InOrderMapper(workers)  # here while images are cheap, in threads once they are slow

    def submit(batch):
        loaded = decode(load, batch)
        good = [i for i, (_, err) in enumerate(loaded) if err is None]
        future = model_thread.submit(clf, np.stack([loaded[i][0] for i in good])) if good else None
        return batch, loaded, good, future

    def rows_of(job) -> List[dict]:
        batch, loaded, good, future = job
        rows: List[Optional[dict]] = [None] * len(batch)
        if future is not None:
            scored = _rows([batch[i] for i in good], future.result(), clf.class_names, top_k, min_confidence)
            for i, row in zip(good, scored):
                rows[i] = row
        for i, (p, (_, err)) in enumerate(zip(batch, loaded)):
            if err is not None:
                rows[i] = {"path": p, "label": None, "confidence": None, "top_k": [], "error": err,
                           "abstained": False}
        return rows

    in_flight: "deque" = deque()  # submitted batches, oldest first
    failure: Optional[BaseException] = None
    exhausted = False
    try:
        while True:
            batch: List[str] = []
            while not exhausted and len(batch) < batch_size:
                try:  # wait for input only when there is nothing else to do
                    item = incoming.get(block=not batch and not in_flight)
                except queue.Empty:
                    break
                if item is end or isinstance(item, _Failure):
                    exhausted = True
                    failure = item.error if isinstance(item, _Failure) else None
                    break
                batch.append(item)
            if batch:
                with room:
                    ahead[0] -= len(batch)
                    room.notify()
                in_flight.append(submit(batch))
            # yield the oldest batch once the next one is on its way, or when no more input is waiting
            while in_flight and (len(in_flight) > 1 or not batch or exhausted):
                yield rows_of(in_flight.popleft())
            if exhausted and not in_flight:
                if failure is not None:
                    raise failure
                return
    finally:
        stop.set()
        model_thread.shutdown(wait=False, cancel_futures=True)
        decode.close(wait=False)
