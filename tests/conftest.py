"""Shared fixtures: images drawn with Pillow in temp folders, an in-process CLI runner, and one tiny
model trained once per session (plus its ONNX export) that the command tests share.

Every registry the tests use lives in a temp folder; $IMGCLF_HOME points at an empty temp folder too, so a
test that forgets --registry can never write into the user's home.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import atexit
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

# Before anything imports TensorFlow (the CLI imports it lazily, inside the commands).
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
# Never the user's registry, also for the subprocesses the tests start.
os.environ["IMGCLF_HOME"] = tempfile.mkdtemp(prefix="imgclf-test-home-")
atexit.register(shutil.rmtree, os.environ["IMGCLF_HOME"], True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from imgclf.cli import app  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_IMAGES = REPO / "sample_images"

# Hypothesis: the same examples on every run (a CI failure reproduces on a laptop) and no per-example
# deadline (this machine is shared and noisy). HYPOTHESIS_PROFILE=explore draws new examples each run.
hypothesis_settings.register_profile("fixed", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

# ------------------------------------------------------------------------------------------ the CLI


def cli(*args, input: Optional[str] = None):
    """Run `imgclf ARGS` in-process. A Python exception escaping the CLI (a traceback a user would see)
    fails the test with that traceback; so does the word Traceback in the output."""
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"`imgclf {' '.join(map(str, args))}` crashed:\n{tb}\nstderr:\n{result.stderr}")
    assert "Traceback" not in result.output, result.output
    return result


def error_line(result) -> str:
    """The single `error: ...` line of a failed command (asserts there is exactly one error line)."""
    assert result.exit_code != 0, result.output
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def table_rows(text: str) -> list:
    """The body rows of a rich table as lists of stripped cells (header and rules left out). A cell that
    rich wrapped onto more lines shows as extra rows whose other cells are empty."""
    return [[c.strip() for c in line.strip()[1:-1].split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]


def run_imgclf(*args, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """`python -m imgclf ARGS` in a real process (for what needs one: signals, parallel runs)."""
    return subprocess.run([sys.executable, "-m", "imgclf", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), **kw)


def child_env() -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def user_env() -> dict:
    """The environment of a user's shell: no PYTHONPATH, so only what `pip install` put in place is found."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def installed_imgclf() -> Path:
    """The `imgclf` console script that `pip install` wrote next to this interpreter (the README's install)."""
    script = Path(sys.executable).parent / ("imgclf.exe" if os.name == "nt" else "imgclf")
    assert script.is_file(), f"no console script {script}: is the package installed (pip install -e .)?"
    return script


# A child `imgclf` that stops at a known point of its run: it wraps MODULE.FUNCTION so that, when the call
# matches CONDITION (a Python expression over `args` and `kwargs`), it writes MARKER and sleeps, before or after the real
# call (WHEN). The test waits for MARKER, then signals the paused process, so the signal lands exactly there
# (not "some time after" a fixed delay).
PAUSE_AT = r"""
import faulthandler, importlib, os, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # `interrupt` asks a child that hangs where it is
# Ctrl-C as in a terminal: a suite started in the background (`cmd &` in a script) hands its children an ignored
# SIGINT, and Python then leaves it ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
target, marker, when, condition = sys.argv[1:5]
parts = target.split(".")
for cut in range(len(parts) - 1, 0, -1):      # the longest importable module, then attributes (a class)
    try:
        module = importlib.import_module(".".join(parts[:cut]))
        break
    except ImportError:
        continue
for attr in parts[cut:-1]:
    module = getattr(module, attr)
func_name = parts[-1]
real = getattr(module, func_name)
def pause():
    open(marker, "w").close()
    time.sleep(600)
def paused(*args, **kwargs):
    hit = eval(condition, {"os": os}, {"args": args, "kwargs": kwargs})
    if hit and when == "before":
        pause()
    result = real(*args, **kwargs)
    if hit and when == "after":
        pause()
    return result
setattr(module, func_name, paused)
sys.argv = ["imgclf"] + sys.argv[5:]
from imgclf.cli import main
main()
"""


def start_paused(target: str, marker: Path, *args, when: str = "after", condition: str = "True") \
        -> subprocess.Popen:
    """`imgclf ARGS` in a real process that pauses at TARGET (see PAUSE_AT) and writes MARKER there."""
    return subprocess.Popen([sys.executable, "-c", PAUSE_AT, target, str(marker), when, condition,
                             *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def interrupt(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Ctrl-C a child of `start_paused` and wait for it to end; its stderr. A child that does not end in
    time fails the test with the stacks of all its threads (faulthandler, SIGUSR1), not a bare timeout."""
    import signal
    import time
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        proc.kill()
        err = proc.communicate()[1]
        raise AssertionError(f"the process did not end within {timeout:.0f} s of Ctrl-C; its threads "
                             f"and stderr:\n{err[-8000:]}") from None


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until PATH exists; fail (with the child's stderr) if the process ends first or it takes too long."""
    import time
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {path.name}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path.name} did not appear within {timeout:.0f} s")
        time.sleep(0.02)


# --------------------------------------------------------------------------------------- ONNX parity


def write_small_backbone(path: Path, seed: int):
    """A MobileNetV2 backbone weights file (alpha 0.35, no top, 96 px, random init from `seed`): enough for
    tests of the pretrained path's plumbing. Returns the backbone."""
    import keras
    keras.utils.set_random_seed(seed)
    backbone = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None)
    backbone.save_weights(path)
    return backbone


def assert_onnx_matches_keras(version: Path, images, atol: float = 1e-4) -> float:
    """Our own parity check, not the exporter's report: the saved model.keras (exactly as `predict --backend
    keras` loads it) and model.onnx through onnxruntime, on IMAGES decoded by imgclf.preprocessing, agree on
    every top-1 label (where Keras' top two are more than 2*ATOL apart: closer, a difference within ATOL may
    swap them) and within ATOL on every probability. Returns the largest difference."""
    import onnxruntime as ort

    from imgclf.preprocessing import PreprocessingSpec, load_image

    meta = json.loads((version / "metadata.json").read_text())
    spec = PreprocessingSpec.from_dict(meta["preprocessing"])
    x = np.stack([load_image(p, spec) for p in images]).astype(np.float32)
    from imgclf.memory import load_keras_model
    model = load_keras_model(version / "model.keras")  # as predict loads it (imgclf's own layers known)
    from imgclf.calibration import apply_temperature, temperature_of
    # a calibrated model's ONNX graph holds its temperature; `predict --backend keras` applies it the same way
    keras_p = apply_temperature(np.asarray(model(x, training=False), dtype=np.float32), temperature_of(meta))
    sess = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    onnx_p = sess.run(None, {inp.name: x})[0]
    assert onnx_p.shape == keras_p.shape == (len(images), len(meta["class_names"]))
    top2 = np.sort(keras_p, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * atol
    assert (onnx_p.argmax(1) == keras_p.argmax(1))[clear].all(), (onnx_p, keras_p)
    diff = float(np.abs(onnx_p - keras_p).max())
    assert diff <= atol, f"max |dp| {diff:.2e} > {atol:g}"
    return diff


# --------------------------------------------------------------------------------------- the images

COLOURS = {"red": (210, 40, 40), "green": (40, 190, 40), "blue": (40, 40, 210)}


def noisy(mode: str, size=(16, 16), base=None, rng=None, spread: float = 25.0) -> Image.Image:
    """A small noisy image: around `base` (a grey level or an RGB colour) or uniform noise."""
    rng = rng if rng is not None else np.random.default_rng()
    w, h = size
    if mode == "L":
        centre = 128 if base is None else base
        arr = centre + rng.normal(0, spread if base is not None else 80, (h, w))
    else:
        centre = np.array(base if base is not None else (128, 128, 128), dtype=float)
        arr = centre[None, None, :] + rng.normal(0, spread if base is not None else 80, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode)


def assert_augment_option_refused(tmp_path: Path, option: str, value: str, message: str) -> None:
    """A bad augmentation option is refused by both `train` and `augment`: exit 2, `message` as the one error
    line, and neither the registry nor the destination folder created."""
    make_tree(tmp_path / "raw", {"red": 2, "green": 2}, size=(8, 8))
    for args in (("train", tmp_path / "raw", "--registry", tmp_path / "reg"),
                 ("augment", tmp_path / "raw", tmp_path / "out", "--per-image", "1")):
        r = cli(*args, option, value)
        assert r.exit_code == 2, r.output
        assert error_line(r) == message
    assert not (tmp_path / "out").exists() and not (tmp_path / "reg").exists()


def augmented_differences(out: Path, same_shape: bool = False):
    """Mean absolute pixel difference of each `imgclf augment` output (*_augN.png) in `out` from its original
    copy beside it; with `same_shape`, also assert that each keeps its original's size."""
    diffs = []
    for f in Path(out).rglob("*_aug*.png"):
        orig = f.with_name(f.name.split("_aug")[0] + ".png")
        a, b = (np.asarray(Image.open(p).convert("RGB")).astype(float) for p in (f, orig))
        if same_shape:
            assert a.shape == b.shape, f
        diffs.append(np.abs(a - b).mean())
    return diffs


def make_tree(root: Path, counts: Dict[str, int], mode: str = "RGB", size=(16, 16), seed: int = 0,
              ext: str = ".png") -> Path:
    """root/<class>/img_NNN<ext>. Classes are easy to tell apart: colours (red/green/blue) in RGB, brightness
    (dark/bright/mid) in grayscale. Every image has its own noise, so no two files are identical."""
    rng = np.random.default_rng(seed)
    grey_levels = {"dark": 40, "bright": 215, "mid": 128}
    for i, (cls, n) in enumerate(counts.items()):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        if mode == "L":
            base = grey_levels.get(cls, [40, 215, 128][i % 3])
        else:
            base = COLOURS.get(cls, list(COLOURS.values())[i % 3])
        for k in range(n):
            noisy(mode, size, base, rng).save(d / f"img_{k:03d}{ext}")
    return root


#: images whose colour is not their folder's: a model that learned the colours gets these wrong
PLANTED = {"red/looks_green_1.png": "green", "red/looks_green_2.png": "green", "green/looks_blue.png": "blue"}


def planted_eval_tree(root: Path) -> Path:
    """An evaluation tree of 5 colour images per class (blue, green, red) plus the PLANTED mistakes."""
    make_tree(root, {c: 5 for c in ("blue", "green", "red")}, size=(20, 20), seed=21)
    rng = np.random.default_rng(22)
    for rel, colour in PLANTED.items():
        noisy("RGB", (20, 20), COLOURS[colour], rng).save(root / rel)
    return root


def tree_digest(root: Path) -> dict:
    """relative path -> (kind, content hash or link target) for everything below root (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", None)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def image_files(root: Path):
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg"))


# ----------------------------------------------------------------------------------------- fixtures


@dataclass
class Trained:
    registry: Path          # registry root
    data: Path              # the class-folder tree it was trained on
    name: str               # registry name
    path: Path              # the version folder

    @property
    def metadata(self) -> dict:
        return json.loads((self.path / "metadata.json").read_text())


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> Path:
    """Three colour classes, 12 RGB images of 20x20 each."""
    return make_tree(tmp_path_factory.mktemp("colour") / "colours", {"blue": 12, "green": 12, "red": 12},
                     mode="RGB", size=(20, 20), seed=1)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, colour_data) -> Trained:
    """One tiny model for the whole session: mlp (learns colours in 3 epochs), 16 px. Tests that change
    the registry work on a copy (`registry_copy`)."""
    registry = tmp_path_factory.mktemp("registry")
    r = cli("train", colour_data, "--registry", registry, "--arch", "mlp", "--epochs", 3, "--image-size", 16,
            "--patience", 0, "--name", "colours", "--format", "json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    return Trained(registry, colour_data, "colours", Path(info["path"]))


@pytest.fixture(scope="session")
def exported(tmp_path_factory, trained) -> Trained:
    """The session model in its own registry, exported to ONNX."""
    registry = tmp_path_factory.mktemp("registry-onnx")
    shutil.copytree(trained.registry, registry, dirs_exist_ok=True)
    r = cli("export", "colours", "--registry", registry)
    assert r.exit_code == 0, r.output
    return Trained(registry, trained.data, "colours", registry / "colours" / "1")


@pytest.fixture
def registry_copy(tmp_path, trained) -> Path:
    """A private copy of the session registry, for tests that change it."""
    dest = tmp_path / "registry"
    shutil.copytree(trained.registry, dest)
    return dest


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------- a model that makes mistakes (calibration, compare)


@pytest.fixture(scope="session")
def hard_data(tmp_path_factory) -> Path:
    """A split root of three overlapping colour classes (close base colours, wide noise), 8x8 RGB:
    train 60, val 40, test 40 per class. A small model gets about two thirds of them right."""
    root = tmp_path_factory.mktemp("hard") / "hard"
    rng = np.random.default_rng(5)
    bases = {"a": (120, 110, 110), "b": (110, 120, 110), "c": (110, 110, 120)}
    for split, n in (("train", 60), ("val", 40), ("test", 40)):
        for cls, base in bases.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                noisy("RGB", (8, 8), base, rng, spread=60).save(d / f"{k:03d}.png")
    return root


@pytest.fixture(scope="session")
def hard_trained(tmp_path_factory, hard_data) -> Trained:
    """mlp trained on `hard_data` for 20 epochs, not calibrated (T = 1): the base of the calibration and
    comparison tests, which derive their models from it with `derived_model`."""
    registry = tmp_path_factory.mktemp("registry-hard")
    r = cli("train", hard_data, "--registry", registry, "--arch", "mlp", "--epochs", 20, "--patience", 0,
            "--name", "hard", "--calibrate", "none", "--format", "json")
    assert r.exit_code == 0, r.output
    return Trained(registry, hard_data, "hard", Path(json.loads(r.stdout)["path"]))


def derived_model(base: Trained, registry: Path, version: int, change_output_layer) -> Path:
    """A copy of `base` as NAME/VERSION in `registry`, its final layer's (kernel, bias) replaced by
    change_output_layer(kernel, bias); no ONNX export, no evaluation. Returns the version folder."""
    import keras

    dest = registry / base.name / str(version)
    shutil.copytree(base.path, dest)
    for leftover in ("model.onnx", "evaluation", "compare"):
        p = dest / leftover
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    model = keras.models.load_model(dest / "model.keras", compile=False)
    layer = model.get_layer("probabilities")
    layer.set_weights(list(change_output_layer(*layer.get_weights())))
    model.save(dest / "model.keras")
    meta = json.loads((dest / "metadata.json").read_text())
    meta.update(version=version, created=f"{meta['created']}-{version}")
    meta.pop("onnx", None)
    meta.pop("evaluation", None)
    (dest / "metadata.json").write_text(json.dumps(meta, indent=2))
    return dest
