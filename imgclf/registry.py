"""The model registry on disk.

    ROOT/NAME/VERSION/   model.keras, metadata.json, history.csv, curves.png, [model.onnx], [model.int8.onnx],
                         [evaluation/]
    ROOT/NAME/tags.json  {"alias": VERSION}
    ROOT/.staging/RUN/   a training run in progress (checkpoints; resumable); never listed as a model
    ROOT/NAME/.last_version  the last number handed out: numbers are never reused
    ROOT/.cache/         decoded pixels of datasets (see data/pipeline.py); safe to delete
    ROOT/.lock           a file lock: version numbers are handed out under it

A version appears only by an atomic rename of a complete staging folder, so a killed or failed run
never shows up as a usable model. ROOT is --registry, else $IMGCLF_HOME, else a per-user data folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from imgclf import config
from imgclf.errors import ModelError, ModelNotFound, UsageError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
METADATA = config.METADATA_FILE
KERAS_FILE = config.KERAS_FILE
ONNX_FILE = config.ONNX_FILE
INT8_ONNX_FILE = config.INT8_ONNX_FILE
#: the model files a version can hold, in the order `models show` lists them
MODEL_FILES = (KERAS_FILE, ONNX_FILE, INT8_ONNX_FILE)
HISTORY = config.HISTORY_FILE
CURVES = config.CURVES_FILE  # drawn from history.csv at the end of training
TAGS = config.TAGS_FILE
STAGING = ".staging"
#: the environment variable that moves the registry (the CLI's --registry DIR wins over it)
HOME_ENV = "IMGCLF_HOME"
#: said wherever a model is not found: where else the models could be
ELSEWHERE_HINT = f"pass --registry DIR or set {HOME_ENV} to use another registry"


def default_root() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "imgclf" / "models"


def root_of(registry: Optional[os.PathLike]) -> Path:
    return Path(registry) if registry else default_root()


def check_name(name: str, what: str = "model name") -> str:
    if not NAME_RE.match(name or "") or ".." in name:
        raise UsageError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
                         "(at most 64, starting with a letter or digit)")
    return name


def safe_name(text: str) -> str:
    """A valid model name derived from a folder name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "model"
    if not name[0].isalnum():
        name = "m" + name
    return name[:64].replace("..", ".")


class Lock:
    """An exclusive lock on ROOT/.lock (fcntl on POSIX, msvcrt on Windows)."""

    def __init__(self, root: Path):
        self.path = root / ".lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        if sys.platform == "win32":
            import msvcrt
            while True:
                try:
                    msvcrt.locking(self.fh.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    time.sleep(0.05)
        else:
            import fcntl
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if sys.platform != "win32":
            import fcntl
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass
class ModelRef:
    path: Path                   # the version folder (or the folder holding a standalone file)
    metadata: dict
    onnx_only: Optional[Path] = None  # a standalone .onnx file given by path

    @property
    def label(self) -> str:
        m = self.metadata
        return f"{m.get('name', '?')}:{m.get('version', '?')}" if "name" in m else str(self.path)

    @property
    def kind(self) -> str:
        """"classifier" (train), or "generator" (synth: makes images, classifies nothing)."""
        return self.metadata.get("kind", "classifier")

    @property
    def keras_path(self) -> Path:
        return self.path / KERAS_FILE

    @property
    def onnx_path(self) -> Path:
        return self.onnx_only or self.path / ONNX_FILE

    @property
    def spec(self):
        """The preprocessing the model was trained with (a PreprocessingSpec); ModelError when this version
        of imgclf cannot honour it."""
        from imgclf.preprocessing import PreprocessingSpec

        if self.kind == "generator":
            raise ModelError(f"{self.label} is an image generator (from `imgclf synth`), not a classifier; "
                             f"make images with `imgclf synth --from {self.metadata.get('name', self.path)} OUT`")
        try:
            return PreprocessingSpec.from_dict(self.metadata["preprocessing"])
        except (KeyError, TypeError, ValueError) as e:
            where = self.onnx_only or self.path / METADATA
            raise ModelError(f"{where}: unusable preprocessing spec ({e})") from None


def int8_path(ref: ModelRef) -> Path:
    """The int8 file of a model (a standalone .onnx file given by path is its own int8 file when it was
    quantized); raises UsageError, with what to run, when there is none."""
    if ref.onnx_only:
        if "quantization" in ref.metadata:
            return ref.onnx_only
        raise UsageError(f"{ref.onnx_only}: not an int8 file (no quantization in its metadata); "
                         "use --precision fp32")
    path = ref.path / INT8_ONNX_FILE
    if not path.is_file():
        raise UsageError(f"model {ref.label} has no int8 export ({INT8_ONNX_FILE}); run `imgclf export "
                         f"{ref.label} --quantize int8` first or use --precision fp32")
    return path


def summary(ref: ModelRef) -> dict:
    """One row of `imgclf models list`. accuracy: the last `imgclf evaluate`, else test, else val accuracy
    from training."""
    md = ref.metadata
    metrics = md.get("metrics", {})
    acc = md.get("evaluation", {}).get("accuracy", metrics.get("test_accuracy", metrics.get("val_accuracy")))
    return {"name": md.get("name"), "version": md.get("version"), "kind": ref.kind, "arch": md.get("arch"),
            "classes": len(md.get("class_names", [])), "accuracy": acc, "onnx": ref.onnx_path.is_file(),
            "created": md.get("created"), "path": str(ref.path)}


def model_files(ref: ModelRef) -> List[dict]:
    """The model files present in a version folder (or the standalone file), with their sizes."""
    paths = [ref.onnx_only] if ref.onnx_only else [ref.path / f for f in MODEL_FILES]
    return [{"file": p.name, "bytes": p.stat().st_size, "size": _size(p.stat().st_size), "path": str(p)}
            for p in paths if p.is_file()]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _versions(root: Path, name: str) -> List[int]:
    d = root / name
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        if p.name.isdigit() and (p / METADATA).is_file():
            out.append(int(p.name))
    return sorted(out)


def new_staging(root: Path, name: str, run_id: Optional[str] = None) -> Path:
    check_name(name)
    run_id = run_id or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path = root / STAGING / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def commit(root: Path, staging: Path, name: str, metadata: dict) -> Tuple[int, Path]:
    """Give the run its version number and make it visible, atomically."""
    check_name(name)
    with Lock(root):
        existing = [int(p.name) for p in (root / name).iterdir() if p.name.isdigit()] \
            if (root / name).is_dir() else []
        # never reuse a number, even after `models rm` of the newest version: a tag or a note that says
        # NAME:3 must not silently point at another model later
        counter = root / name / ".last_version"
        try:
            last = int(counter.read_text().strip())
        except (OSError, ValueError):
            last = 0
        version = max(max(existing, default=0), last) + 1
        metadata = dict(metadata, name=name, version=version)
        write_json_atomic(staging / METADATA, metadata)
        (root / name).mkdir(parents=True, exist_ok=True)
        final = root / name / str(version)
        os.rename(staging, final)
        counter.write_text(str(version))
    return version, final


def update_metadata(ref: ModelRef, **fields) -> dict:
    if ref.onnx_only:
        return ref.metadata
    root = ref.path.parent.parent
    with Lock(root):
        meta = read_json(ref.path / METADATA)
        meta.update(fields)
        write_json_atomic(ref.path / METADATA, meta)
    ref.metadata = meta
    return meta


def _load_ref(folder: Path) -> ModelRef:
    try:
        meta = read_json(folder / METADATA)
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"{folder}: not a usable model folder ({METADATA}: {e})") from None
    return ModelRef(folder, meta)


def tags(root: Path, name: str) -> Dict[str, int]:
    """TAG -> version of model NAME (empty when it has none or the file is unreadable)."""
    p = root / name / TAGS
    try:
        return read_json(p) if p.is_file() else {}
    except (OSError, ValueError):
        return {}


def resolve(registry, ref: str = "latest") -> ModelRef:
    """MODEL: NAME (newest version), NAME:VERSION, NAME:TAG, latest, or a path to a model folder or file."""
    root = root_of(registry)
    p = Path(ref)
    # A bare NAME that is also a folder in the working directory (typically the data folder the model was
    # named after) means the registry model, unless that folder is itself a model folder.
    shadowed = (os.sep not in ref and p.is_dir() and not (p / METADATA).is_file() and NAME_RE.match(ref)
                and bool(_versions(root, ref)))
    if ref not in ("latest",) and not shadowed and (p.exists() or os.sep in ref
                                                    or ref.endswith((".keras", ".onnx"))):
        if not p.exists():
            raise ModelNotFound(f"{ref}: model file or folder not found")
        if p.is_dir():
            if not (p / METADATA).is_file():
                also = (f", and the registry {root} has no model of that name" if os.sep not in ref
                        and NAME_RE.match(ref) else "")
                raise ModelNotFound(f"{ref}: folder has no {METADATA}; not an imgclf model{also}")
            return _load_ref(p)
        if (p.parent / METADATA).is_file():
            return _load_ref(p.parent)
        if p.suffix == ".onnx":
            from imgclf.onnx_meta import read_onnx_metadata
            return ModelRef(p.parent, read_onnx_metadata(p), onnx_only=p)
        raise ModelNotFound(f"{ref}: no {METADATA} beside this file; not an imgclf model")
    if ref == "latest":  # the newest classifier: a generator (imgclf synth) classifies nothing
        models = [m for m in list_models(root)[0] if m.kind == "classifier"]
        if not models:
            raise ModelNotFound(f"no models in the registry {root}; train one with `imgclf train DATA`, or "
                                f"{ELSEWHERE_HINT}")
        newest = max(models, key=lambda m: (m.metadata.get("created", ""), m.metadata.get("version", 0)))
        return newest
    name, _, version = ref.partition(":")
    check_name(name)
    versions = _versions(root, name)
    if not versions:
        known = sorted({m.metadata.get("name") for m in list_models(root)[0]})
        hint = f"; known: {', '.join(known)}" if known else f" (it has no models; {ELSEWHERE_HINT})"
        raise ModelNotFound(f"unknown model {name!r} in {root}{hint}")
    if not version:
        return _load_ref(root / name / str(versions[-1]))
    if version.isdigit():
        if int(version) not in versions:
            raise ModelNotFound(f"model {name} has no version {version} (versions: "
                                f"{', '.join(map(str, versions))})")
        return _load_ref(root / name / version)
    aliases = tags(root, name)
    if version in aliases and int(aliases[version]) in versions:
        return _load_ref(root / name / str(aliases[version]))
    raise ModelNotFound(f"model {name} has no version or tag {version!r}")


def list_models(registry) -> Tuple[List[ModelRef], List[str]]:
    """(complete models sorted by name and version, debris descriptions). Never raises on debris."""
    root = root_of(registry)
    models, debris = [], []
    if not root.is_dir():
        return models, debris
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        for v in sorted((p for p in d.iterdir() if p.is_dir()), key=lambda p: (not p.name.isdigit(), p.name)):
            if not v.name.isdigit():
                continue
            try:
                models.append(_load_ref(v))
            except ModelNotFound as e:
                debris.append(str(e))
    for run, info, alive in unfinished_runs(root):
        if run.name.startswith(".rm-"):
            continue
        state = "in progress" if alive else "interrupted"
        debris.append(f"unfinished run {run.name} ({state}, {info.get('epochs_done', 0)} epochs done): "
                      f"resume with `imgclf train --resume {run.name}`, or delete with `imgclf models clean`")
    models.sort(key=lambda m: (m.metadata.get("name", ""), int(m.metadata.get("version", 0))))
    return models, debris


def remove(registry, ref: str) -> Path:
    root = root_of(registry).resolve()
    model = resolve(registry, ref)
    if model.onnx_only:
        raise UsageError(f"{ref}: not a registry model; `models rm` removes only inside {root}")
    target = model.path.resolve()
    if root not in target.parents or target.parent.parent != root:
        raise UsageError(f"{ref}: {target} is outside the registry {root}; not removed")
    with Lock(root):
        name, version = model.metadata.get("name"), int(model.metadata.get("version", -1))
        counter = root / name / ".last_version"
        try:
            last = int(counter.read_text().strip())
        except (OSError, ValueError):
            last = 0
        counter.write_text(str(max(last, version)))
        aliases = tags(root, name)
        if any(int(v) == version for v in aliases.values()):
            write_json_atomic(root / name / TAGS, {k: v for k, v in aliases.items() if int(v) != version})
        trash = root / STAGING / f".rm-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, trash)  # atomic: gone from listings at once
    shutil.rmtree(trash, ignore_errors=True)
    return target


def check_tag(alias: str) -> str:
    check_name(alias, "tag")
    if alias.isdigit() or alias == "latest":
        raise UsageError(f"invalid tag {alias!r}: a tag cannot be a number or 'latest'")
    return alias


_ANY = object()


def set_tag(registry, ref: str, alias: str, expect_version=_ANY) -> ModelRef:
    """Point NAME:ALIAS at the version `ref`. With `expect_version` (a version number, or None for "no
    version"), only if the tag is still held by that version (checked under the lock: a gate's decision
    is never applied to a tag that moved meanwhile)."""
    check_tag(alias)
    model = resolve(registry, ref)
    if model.onnx_only:
        raise UsageError(f"{ref}: only registry models can be tagged")
    root = root_of(registry)
    name = model.metadata["name"]
    with Lock(root):
        aliases = tags(root, name)
        if expect_version is not _ANY and aliases.get(alias) != expect_version:
            from imgclf.errors import ImgclfError
            raise ImgclfError(f"{name}:{alias} moved to version {aliases.get(alias)} meanwhile; not changed "
                              "(run the command again)")
        aliases[alias] = int(model.metadata["version"])
        write_json_atomic(root / name / TAGS, aliases)
    return model


def pid_alive(pid) -> bool:
    """Whether process `pid` is running. POSIX: signal 0 (checks, sends nothing). Windows: os.kill would
    end the process (any signal but Ctrl-C/Ctrl-Break events terminates it), so ask OpenProcess instead."""
    try:
        pid = int(pid)
    except (ValueError, TypeError):
        return False
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except PermissionError:  # it exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    query_limited_information, still_active, access_denied = 0x1000, 259, 5
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return ctypes.get_last_error() == access_denied  # it exists, and we may not look at it
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def unfinished_runs(registry) -> List[Tuple[Path, dict, bool]]:
    """(staging folder, run.json contents, still running) for every run that never reached the registry."""
    staging = root_of(registry) / STAGING
    out = []
    if staging.is_dir():
        for run in sorted(staging.iterdir()):
            info = {}
            try:
                info = read_json(run / config.RUN_FILE)
            except (OSError, ValueError):
                pass
            out.append((run, info, pid_alive(info.get("pid")) if info else False))
    return out


def clean(registry) -> List[Path]:
    """Remove the folders of unfinished runs whose process is gone (they can no longer be resumed
    after this). Runs still in progress are left alone."""
    removed = []
    for run, info, alive in unfinished_runs(registry):
        if not alive:
            shutil.rmtree(run, ignore_errors=True)
            removed.append(run)
    return removed
