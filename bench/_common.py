"""Shared helpers of the bench/ scripts: benchmark data sets made from Fashion-MNIST folders, child
processes measured with wait4 (CPU seconds, peak RSS), and the output convention (human lines, then
one JSON line on stdout).

Nothing here imports TensorFlow: the parent process of a benchmark stays small and quiet, and every
measured run happens in a child process of its own.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: Fashion-MNIST as class folders (OUT/train/<class>/*.png, OUT/test/...), made by
#: ../shared/data/fashion_mnist_folders.py
DEFAULT_SOURCE = os.environ.get("IMGCLF_BENCH_SOURCE", "/tmp/fmnist")
#: where the benchmark data sets, registries and caches are made (reused between runs)
DEFAULT_WORKDIR = os.environ.get("IMGCLF_BENCH_DIR", "/tmp/imgclf-bench")


def child_env(**extra) -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def imgclf_location() -> str:
    """Where `import imgclf` resolves for this process and its children (PYTHONPATH first, then the
    installed or editable package): record it, so a figure is never credited to the wrong copy."""
    import importlib.util

    spec = importlib.util.find_spec("imgclf")
    return str(Path(spec.origin).parent) if spec and spec.origin else "?"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "imgclf": imgclf_location()}


def source_split(source: str, split: str) -> Path:
    root = Path(source) / split
    if not root.is_dir():
        sys.exit(f"{root}: not found. Make Fashion-MNIST class folders first:\n"
                 f"    python ../shared/data/fashion_mnist_folders.py {source}\n"
                 "or pass --source (a folder with train/<class>/ and test/<class>/)")
    return root


def _pick(src_root: Path, per_class: int, offset: int = 0) -> Dict[str, List[Path]]:
    """The first `per_class` files (after `offset`) of each class folder, in a stable order."""
    out = {}
    for cls in sorted(p.name for p in src_root.iterdir() if p.is_dir()):
        files = sorted((src_root / cls).iterdir(), key=lambda p: (len(p.name), p.name))
        out[cls] = files[offset:offset + per_class]
    return out


def make_dataset_folder(source: str, split: str, dest: Path, per_class: int, fmt: str = "png",
                        size: Optional[int] = None, rgb: bool = False, offset: int = 0) -> Path:
    """A class-folder data set of `per_class` images per class from SOURCE/SPLIT, written once.

    fmt png with no size and no rgb: the original files, copied. Otherwise each image is resized to
    `size` (bilinear), tinted with a per-image colour when `rgb` (so it really has 3 channels; the
    tint does not depend on the class) and saved as PNG or JPEG (quality 90)."""
    done = dest / ".complete"
    if done.exists():
        return dest
    from PIL import Image

    if dest.exists():
        shutil.rmtree(dest)
    picks = _pick(source_split(source, split), per_class, offset)
    ext = ".jpg" if fmt == "jpeg" else ".png"
    k = 0
    for cls, files in picks.items():
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            k += 1
            target = dest / cls / (f.stem + ext)
            if fmt == "png" and size is None and not rgb:
                shutil.copyfile(f, target)
                continue
            im = Image.open(f).convert("L")
            if size:
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            if rgb:
                # a per-image colour cast: each channel scaled by its own factor in [0.5, 1]
                factors = [0.5 + ((k * m) % 101) / 200 for m in (37, 59, 83)]
                im = Image.merge("RGB", [im.point(lambda v, f=f: int(v * f)) for f in factors])
            if fmt == "jpeg":
                im.save(target, quality=90)
            else:
                im.save(target)
    done.write_text("ok\n")
    return dest


class ChildResult:
    def __init__(self, rc: int, wall: float, cpu: float, maxrss_mib: float, stdout: str, stderr: str):
        self.rc, self.wall, self.cpu, self.maxrss_mib = rc, wall, cpu, maxrss_mib
        self.stdout, self.stderr = stdout, stderr

    def json_line(self) -> dict:
        """The last line of the child's stdout that parses as a JSON object."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        raise RuntimeError(f"child printed no JSON line (rc {self.rc}); stderr tail:\n{self.stderr[-3000:]}")


def run_child(cmd: Sequence[str], env: Optional[dict] = None, stdin_data: Optional[bytes] = None,
              check: bool = True, cwd: Optional[str] = None) -> ChildResult:
    """Run a command to completion; its own wall time, CPU seconds (user+sys, all threads) and peak RSS
    (from wait4, so only this child is counted)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(list(cmd), stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or child_env(), cwd=cwd)
    # read both pipes while the child runs (no deadlock on big outputs), then reap it with wait4
    import threading

    chunks = {"out": [], "err": []}

    def drain(stream, key):
        for block in iter(lambda: stream.read(65536), b""):
            chunks[key].append(block)

    readers = [threading.Thread(target=drain, args=(p.stdout, "out")),
               threading.Thread(target=drain, args=(p.stderr, "err"))]
    for r in readers:
        r.start()
    if stdin_data is not None:
        try:
            p.stdin.write(stdin_data)
        except BrokenPipeError:
            pass
        p.stdin.close()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    out = b"".join(chunks["out"]).decode(errors="replace")
    err = b"".join(chunks["err"]).decode(errors="replace")
    res = ChildResult(p.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out, err)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{err[-4000:]}")
    return res


def imgclf_cmd(*args: str) -> List[str]:
    """`imgclf ARGS` as a user runs it: the console script next to this Python, else `python -m imgclf`."""
    script = Path(sys.executable).with_name("imgclf")
    found = str(script) if script.is_file() else shutil.which("imgclf")
    return ([found] if found else [sys.executable, "-m", "imgclf"]) + list(args)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def imgclf_in_process(argv: Sequence[str]) -> float:
    """Run `imgclf ARGV` in this process, as the console script would (for scripts that look inside the run
    or its model afterwards); returns the CPU seconds it took (user + sys, all threads)."""
    import typer

    from imgclf.cli import app

    before = resource.getrusage(resource.RUSAGE_SELF)
    typer.main.get_command(app).main(list(argv), prog_name="imgclf", standalone_mode=False)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def child_rows(cmd: Sequence[str], marker: str, what: str) -> List[dict]:
    """Run CMD (a child that prints `MARKER {json}` lines among others) and return those JSON records;
    exits naming WHAT when the child fails."""
    res = subprocess.run(list(cmd), stdout=subprocess.PIPE, text=True, env=child_env())
    if res.returncode:
        sys.exit(f"{what}: the child failed (exit {res.returncode})")
    return [json.loads(line[len(marker):]) for line in res.stdout.splitlines() if line.startswith(marker)]


def emoji_seed_parser(doc: str):
    """The arguments of the scripts that train one emoji model per seed in a child process and score it
    (wise_ft.py, memory_weights.py): SPLIT --proxy --target --seeds --workdir; run_per_seed adds the rest."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1])
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--child-seed", type=int, help=argparse.SUPPRESS)
    return ap


def run_per_seed(ap, child, parent) -> None:
    """Parse sys.argv with `ap` (imgclf train options after `--` become args.train_args), then run
    child(args) with args.seed in a child process's role (--child-seed), else parent(args)."""
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.train_args = argv[cut + 1:]
    if args.child_seed is not None:
        args.seed = args.child_seed
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        child(args)
    else:
        parent(args)


def emit(bench: str, lines: Sequence[str], record: dict) -> None:
    """The human lines, then one JSON line: {"bench": NAME, ...figures..., "machine": {...}}."""
    for line in lines:
        print(line)
    record = {"bench": bench, **record, "machine": machine()}
    print(json.dumps(record, sort_keys=False, default=float))
    sys.stdout.flush()


def peak_rss_self_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_and_export(registry: Path, data: Path, name: str, *train_args: str) -> str:
    """`imgclf train DATA --epochs 1 ...` then `imgclf export` into `registry`; returns NAME (a model
    given by name with --registry REGISTRY). Reused when the registry already holds it with an export."""
    if (Path(registry) / name / "1" / "model.onnx").is_file():
        return name
    env = child_env()
    run_child(imgclf_cmd("train", str(data), "--epochs", "1", "--patience", "0", "--registry", str(registry),
                         "--name", name, "-q", "--format", "json", *train_args), env=env)
    run_child(imgclf_cmd("export", name, "--registry", str(registry), "-q"), env=env)
    return name
