"""The `imgclf` command line: each command parses, makes one library call, renders.

Heavy libraries (TensorFlow, onnxruntime, scikit-learn) are imported inside the commands, so
`imgclf --help` stays fast. Errors become `error: <one line>` on stderr and a non-zero exit code here.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from imgclf.errors import ImgclfError

app = typer.Typer(
    name="imgclf", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Image classifiers from a folder of class folders: split, augment, train, evaluate, predict, "
         "export to ONNX, and a model registry on disk.",
    context_settings={"help_option_names": ["-h", "--help"]})
models_app = typer.Typer(no_args_is_help=True, help="The model registry: list, show, tag and remove models.")
app.add_typer(models_app, name="models")

RegistryOpt = typer.Option(None, "--registry", envvar="IMGCLF_HOME", metavar="DIR",
                           help="Registry root (default: $IMGCLF_HOME, else a per-user data folder).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress or log lines on stderr (warnings still show).")


class OutFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class TableOrJson(str, Enum):
    table = "table"
    json = "json"


def _fail(message: str, code: int) -> None:
    from imgclf.console import err_console
    err_console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Every command: ImgclfError -> one line on stderr + its exit code; Ctrl-C -> 130. No tracebacks."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImgclfError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(0)
        except MemoryError:
            _fail("out of memory (try a smaller --batch-size or --image-size)", 1)
    return wrapper


def _reporter(quiet: bool = False):
    from imgclf.console import Reporter
    return Reporter(quiet=quiet)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------- split
@app.command()
@handle_errors
def split(src: Path = typer.Argument(..., help="Folder of class folders (never modified)."),
          dest: Path = typer.Argument(..., help="Output folder: DEST/train|val|test/<class>/..."),
          val: float = typer.Option(0.1, help="Fraction of each class for validation."),
          test: float = typer.Option(0.1, help="Fraction of each class for test."),
          seed: int = typer.Option(42, help="Random seed: the same seed gives the same split."),
          mode: str = typer.Option("copy", help="copy | symlink | hardlink."),
          force: bool = typer.Option(False, "--force", help="Replace train/, val/, test/ in a non-empty DEST."),
          format: TableOrJson = typer.Option(TableOrJson.table, "--format", help="table | json"),
          quiet: bool = QuietOpt):
    """Split a class-folder tree into train/val/test, stratified and reproducible, with a manifest."""
    from imgclf.data.split import split_dataset

    rep = _reporter(quiet)
    with rep.progress("placing files", total=None) as advance:
        result = split_dataset(src, dest, val=val, test=test, seed=seed, mode=mode, force=force, progress=advance)
    for p in result.dataset.problems:
        rep.warn(f"skipped {p.path}: {p.reason}")
    if format == TableOrJson.json:
        _print_json({"dest": result.dest, "counts": result.counts, "skipped": len(result.dataset.problems)})
        return
    from imgclf.console import print_table
    names = result.dataset.class_names
    rows = [[c] + [result.counts[s][c] for s in ("train", "val", "test")] for c in names]
    rows.append(["total"] + [sum(result.counts[s].values()) for s in ("train", "val", "test")])
    print_table(f"split of {src} -> {dest}", ["class", "train", "val", "test"], rows)
    rep.info(f"manifest: {Path(dest) / 'split_manifest.csv'}")


# ------------------------------------------------------------------------------------------------ scan
@app.command()
@handle_errors
def scan(data: Path = typer.Argument(..., help="Folder of class folders, or a split root."),
         format: TableOrJson = typer.Option(TableOrJson.table, "--format", help="table | json"),
         duplicates: bool = typer.Option(True, help="Look for identical files (content hash)."),
         quiet: bool = QuietOpt):
    """Check a dataset: classes and counts, image sizes and modes, and every problem file with its reason."""
    from imgclf.inspect import inspect_dataset

    report = inspect_dataset(data, duplicates=duplicates)
    if format == TableOrJson.json:
        _print_json(report)
    else:
        from imgclf.console import print_table
        for split_name, info in report["splits"].items():
            title = f"{split_name}: {info['images']} usable images" if split_name != "." else \
                f"{report['data']}: {info['images']} usable images"
            print_table(title, ["class", "images"], list(info["per_class"].items()))
        print_table("image sizes (width x height)", ["size", "images"], report["sizes"][:10])
        print_table("image modes", ["mode", "images"], report["modes"])
        if report["problems"]:
            print_table(f"{len(report['problems'])} problem files", ["file", "reason"],
                        [(p["path"], p["reason"]) for p in report["problems"]])
        if report["empty_classes"]:
            _reporter().warn(f"empty class folders (not classes): {', '.join(report['empty_classes'])}")
    if not report["usable"]:
        _fail(f"{data}: not usable for training ({report['verdict']})", 1)


# --------------------------------------------------------------------------------------------- augment
@app.command()
@handle_errors
def augment(src: Path = typer.Argument(..., help="Class-folder tree, or a split root (only train/ is augmented)."),
            dest: Path = typer.Argument(..., help="Output folder (originals are copied there too)."),
            per_image: Optional[int] = typer.Option(None, help="New images per original."),
            target_per_class: Optional[int] = typer.Option(None, help="Top each class up to N images."),
            policy: str = typer.Option("medium", help="none | light | medium | heavy (ops below override it)."),
            flip: Optional[str] = typer.Option(None, help="horizontal | vertical | both | none (none for digits/text)."),
            rotate: Optional[float] = typer.Option(None, help="Max rotation in degrees."),
            shift: Optional[float] = typer.Option(None, help="Max shift, fraction of the size."),
            zoom: Optional[float] = typer.Option(None, help="Max zoom, fraction."),
            brightness: Optional[float] = typer.Option(None, help="Max brightness change, fraction."),
            contrast: Optional[float] = typer.Option(None, help="Max contrast change, fraction."),
            seed: int = typer.Option(42, help="Random seed."),
            mode: str = typer.Option("copy", help="How originals are placed: copy | symlink | hardlink."),
            force: bool = typer.Option(False, "--force", help="Write into a non-empty DEST."),
            quiet: bool = QuietOpt):
    """Write augmented copies of images to new files (offline augmentation), class folders preserved."""
    from imgclf.config import AugmentConfig
    from imgclf.data.augment import augment_folder

    cfg = AugmentConfig.from_options(policy, flip=flip, rotate=rotate, shift=shift, zoom=zoom,
                                     brightness=brightness, contrast=contrast)
    rep = _reporter(quiet)
    with rep.progress("augmenting", total=None) as advance:
        result = augment_folder(src, dest, cfg, per_image=per_image, target_per_class=target_per_class,
                                seed=seed, mode=mode, force=force, progress=lambda n, total: advance(n))
    for path, reason in result["problems"]:
        rep.warn(f"skipped {path}: {reason}")
    rep.info(f"wrote {result['augmented']} augmented images and {result['originals']} originals to {dest}")
    _print_json({k: v for k, v in result.items() if k != "problems"} | {"skipped": len(result["problems"])})


# ----------------------------------------------------------------------------------------------- train
@app.command()
@handle_errors
def train(data: Optional[Path] = typer.Argument(None, help="Split root (train/ + val/ and/or test/) or a "
                                                          "class-folder tree."),
          arch: str = typer.Option("auto", help="auto | cnn | mlp | mobilenet_v2 | mobilenet_v3_small | "
                                                "mobilenet_v3_large. auto: mobilenet_v2 (pretrained) for colour "
                                                "images of 64 px or more, or when --weights is given; else cnn."),
          epochs: Optional[int] = typer.Option(None, help="Maximum epochs (early stopping may stop sooner); "
                                                          "pretrained: head epochs (default: 15 from scratch, "
                                                          "6 pretrained)."),
          batch_size: int = typer.Option(64, help="Images per batch."),
          image_size: Optional[int] = typer.Option(None, help="Square input size (default: from the data for "
                                                              "cnn/mlp, 160 for pretrained MobileNet, 224 with "
                                                              "--weights none)."),
          channels: Optional[int] = typer.Option(None, help="1 or 3 (default: 1 when every image is grayscale)."),
          lr: Optional[float] = typer.Option(None, help="Learning rate (Adam; default 0.001)."),
          name: Optional[str] = typer.Option(None, help="Registry name (default: the data folder's name)."),
          seed: int = typer.Option(42, help="Random seed."),
          val_split: float = typer.Option(0.1, help="Held out of the training images when there is no val/."),
          patience: int = typer.Option(4, help="Early stopping patience on val_loss (0 = off)."),
          weights: Optional[str] = typer.Option(None, help="MobileNet: imagenet (default) | none | PATH to a "
                                                           "backbone .weights.h5 (offline). With --arch auto, "
                                                           "imagenet or PATH picks mobilenet_v2."),
          alpha: float = typer.Option(1.0, help="MobileNet width multiplier."),
          fine_tune_epochs: Optional[int] = typer.Option(None, help="Pretrained MobileNet: epochs of phase 2 "
                                                                    "(top of the backbone unfrozen, lr/10; "
                                                                    "default 4)."),
          fine_tune_layers: float = typer.Option(0.3, help="MobileNet phase 2: backbone layers to unfreeze "
                                                           "(N, or a fraction < 1)."),
          augment: Optional[str] = typer.Option(None, help="Online augmentation policy: none | light | medium | "
                                                           "heavy (default: none from scratch, light pretrained)."),
          flip: Optional[str] = typer.Option(None, help="horizontal | vertical | both | none (use none for "
                                                        "digits and text)."),
          rotate: Optional[float] = typer.Option(None, help="Max rotation, degrees."),
          shift: Optional[float] = typer.Option(None, help="Max shift, fraction."),
          zoom: Optional[float] = typer.Option(None, help="Max zoom, fraction."),
          brightness: Optional[float] = typer.Option(None, help="Max brightness change, fraction."),
          contrast: Optional[float] = typer.Option(None, help="Max contrast change, fraction."),
          class_weight: str = typer.Option("none", help="auto (inverse class frequency) | none."),
          mixed_precision: bool = typer.Option(False, "--mixed-precision", help="float16 compute (for GPUs); "
                                                                                "exports stay float32."),
          resume: Optional[str] = typer.Option(None, help="Continue an interrupted run (its id, from "
                                                          "`imgclf models list`)."),
          registry: Optional[Path] = RegistryOpt,
          format: TableOrJson = typer.Option(TableOrJson.table, "--format", help="table | json"),
          quiet: bool = QuietOpt):
    """Train a classifier and save it as a new version in the registry."""
    from imgclf.config import AugmentConfig, TrainConfig
    from imgclf.errors import UsageError
    from imgclf.train import train as run_train

    if data is None and not resume:
        raise UsageError("give DATA (a folder of class folders) or --resume RUN")
    overrides = {k: v for k, v in dict(flip=flip, rotate=rotate, shift=shift, zoom=zoom, brightness=brightness,
                                       contrast=contrast).items() if v is not None}
    aug = AugmentConfig.from_options(augment or "none", **overrides)  # checked now, resolved with the arch
    cfg = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, image_size=image_size, channels=channels,
                      lr=lr, seed=seed, val_split=val_split, patience=patience, name=name, weights=weights,
                      alpha=alpha, fine_tune_layers=fine_tune_layers, fine_tune_epochs=fine_tune_epochs,
                      class_weight=class_weight, augment=aug, augment_policy=augment, augment_overrides=overrides,
                      mixed_precision=mixed_precision)
    meta = run_train(data, cfg, registry_dir=registry, reporter=_reporter(quiet), resume=resume)
    summary = {"name": meta["name"], "version": meta["version"], "path": meta["path"], "metrics": meta["metrics"]}
    if format == TableOrJson.json:
        _print_json(summary)
    else:
        from imgclf.console import print_table
        rows = [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in meta["metrics"].items()]
        print_table(f"model {meta['name']}:{meta['version']}", ["metric", "value"], rows)
        _reporter(quiet).info(f"saved {meta['path']}")


# -------------------------------------------------------------------------------------------- evaluate
@app.command()
@handle_errors
def evaluate(model: str = typer.Argument(..., help="NAME, NAME:VERSION, NAME:TAG, latest, or a model path."),
             data: Path = typer.Argument(..., help="Split root (uses test/, else val/) or a class-folder tree."),
             out: Optional[Path] = typer.Option(None, help="Folder for the outputs (default: the model's "
                                                           "registry folder, evaluation/)."),
             backend: str = typer.Option("auto", help="auto | keras | onnx."),
             format: TableOrJson = typer.Option(TableOrJson.table, "--format", help="table | json"),
             force: bool = typer.Option(False, "--force", help="Overwrite existing outputs in --out."),
             registry: Optional[Path] = RegistryOpt, quiet: bool = QuietOpt):
    """Accuracy, per-class precision/recall/F1, confusion matrix and misclassified images."""
    from imgclf import registry as reg
    from imgclf.evaluate import evaluate as run_eval

    ref = reg.resolve(registry, model)
    rep = _reporter(quiet)
    report = run_eval(ref, data, out=out, backend=backend, force=force, reporter=rep)
    if format == TableOrJson.json:
        _print_json(report)
        return
    from imgclf.console import print_confusion, print_table, out_console
    out_console.print(f"model {report['model']} on {report['data']} ({report['images']} images, "
                      f"{report['backend']}): accuracy [bold]{report['accuracy']:.4f}[/bold], "
                      f"macro F1 {report['macro_f1']:.4f}")
    print_table("per class", ["class", "precision", "recall", "f1", "support"],
                [[r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
                 for r in report["per_class"]])
    print_confusion(report["class_names"], report["confusion_matrix"])
    worst = report["misclassified"][:10]
    if worst:
        print_table(f"most confident mistakes ({len(report['misclassified'])} in all)",
                    ["path", "true", "predicted", "confidence"],
                    [[m["path"], m["true"], m["predicted"], f"{m['confidence']:.3f}"] for m in worst])
    rep.info(f"wrote {', '.join(('metrics.json', 'confusion_matrix.csv/.png', 'misclassified.csv/.png'))} "
             f"to {report['outputs']}")


# --------------------------------------------------------------------------------------------- predict
@app.command()
@handle_errors
def predict(images: List[str] = typer.Argument(..., help="Image files, folders (recursive), or - to read "
                                                         "paths from stdin."),
            model: str = typer.Option("latest", "--model", "-m", help="NAME, NAME:VERSION, NAME:TAG, latest, or "
                                                                      "a path (a model folder, its model.keras, "
                                                                      "or an exported .onnx file)."),
            top_k: int = typer.Option(3, help="How many (label, probability) pairs per image."),
            format: Optional[OutFormat] = typer.Option(None, "--format", help="table | json | jsonl | csv "
                                                                              "(default: table on a terminal, "
                                                                              "else jsonl)."),
            backend: str = typer.Option("auto", help="auto (ONNX when exported) | keras | onnx."),
            batch_size: int = typer.Option(32, help="Images per batch."),
            registry: Optional[Path] = RegistryOpt):
    """Classify images: one result per image, in input order. Exit code 1 if any image failed."""
    from imgclf import registry as reg
    from imgclf.predict import expand_inputs, load_classifier, predict_batches

    if top_k < 1:
        from imgclf.errors import UsageError
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    fmt = format.value if format else ("table" if sys.stdout.isatty() else "jsonl")
    clf = load_classifier(reg.resolve(registry, model), backend)
    batches = predict_batches(clf, expand_inputs(images), top_k=top_k, batch_size=batch_size)
    failed = total = 0
    out = sys.stdout
    # jsonl and csv stream: each batch is written and flushed as soon as the model has classified it
    if fmt == "jsonl":
        encode = json.JSONEncoder(ensure_ascii=False).encode
        for rows in batches:
            total += len(rows)
            failed += sum(r["error"] is not None for r in rows)
            out.write("".join([encode(r) + "\n" for r in rows]))
            out.flush()
    elif fmt == "csv":
        w = csv.writer(out)
        for rows in batches:
            if not total:
                w.writerow(["path", "label", "confidence", "top_k", "error"])
            total += len(rows)
            failed += sum(r["error"] is not None for r in rows)
            w.writerows([r["path"], r["label"] or "", "" if r["confidence"] is None else r["confidence"],
                         ";".join(f"{t['label']}:{t['probability']}" for t in r["top_k"]), r["error"] or ""]
                        for r in rows)
            out.flush()
    else:
        rows = [r for batch in batches for r in batch]
        failed, total = sum(r["error"] is not None for r in rows), len(rows)
        if rows and fmt == "json":
            _print_json(rows)
        elif rows:
            from imgclf.console import print_table
            print_table(None, ["path", "label", "confidence", f"top {top_k}"],
                        [[r["path"], r["label"] or f"error: {r['error']}",
                          "" if r["confidence"] is None else f"{r['confidence']:.3f}",
                          ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"])] for r in rows])
    if not total:
        from imgclf.config import IMAGE_EXTENSIONS
        from imgclf.errors import DataError
        folders = [i for i in images if i != "-"]
        reasons = [f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(folders)}"] if folders else []
        reasons += ["no paths on stdin"] if "-" in images else []
        raise DataError("nothing to classify: " + "; ".join(reasons))
    if failed:
        from imgclf.console import err_console
        err_console.print(f"error: {failed} image(s) could not be classified", style="red", markup=False)
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- export
@app.command()
@handle_errors
def export(model: str = typer.Argument("latest", help="NAME, NAME:VERSION, NAME:TAG, latest, or a model folder."),
           format: str = typer.Option("onnx", "--format", help="onnx (the only format for now)."),
           out: Optional[Path] = typer.Option(None, help="Also write the .onnx file here."),
           opset: int = typer.Option(17, help="ONNX opset."),
           check: Optional[List[Path]] = typer.Option(None, help="An image for the Keras/ONNX parity check "
                                                                 "(repeat for more; default: the model's own "
                                                                 "sample images)."),
           force: bool = typer.Option(False, "--force", help="Overwrite --out."),
           registry: Optional[Path] = RegistryOpt, quiet: bool = QuietOpt):
    """Export a model to ONNX (class names and preprocessing in its metadata) and verify it against Keras."""
    from imgclf import registry as reg
    from imgclf.errors import UsageError
    from imgclf.export import export_onnx

    if format != "onnx":
        raise UsageError(f"--format must be onnx, got {format!r}")
    ref = reg.resolve(registry, model)
    report = export_onnx(ref, out=out, opset=opset, check_paths=[str(c) for c in check] if check else None,
                         force=force)
    rep = _reporter(quiet)
    rep.info(f"parity check on {report['checked_images']} {report['check_source']}: top-1 agreement "
             f"{report['top1_agreement']:.3f}, max |dp| {report['max_abs_diff']:.2e}")
    sys.stdout.write((report["out"] or report["path"]) + "\n")


# ---------------------------------------------------------------------------------------------- models
@models_app.command("list")
@handle_errors
def models_list(registry: Optional[Path] = RegistryOpt,
                format: TableOrJson = typer.Option(TableOrJson.table, "--format", help="table | json")):
    """List the models in the registry (and any unfinished runs)."""
    from imgclf import registry as reg

    models, debris = reg.list_models(registry)
    rows = []
    for m in models:
        md = m.metadata
        metrics = md.get("metrics", {})
        acc = md.get("evaluation", {}).get("accuracy", metrics.get("test_accuracy", metrics.get("val_accuracy")))
        rows.append({"name": md.get("name"), "version": md.get("version"), "arch": md.get("arch"),
                     "classes": len(md.get("class_names", [])), "accuracy": acc,
                     "onnx": m.onnx_path.is_file(), "created": md.get("created"), "path": str(m.path)})
    if format == TableOrJson.json:
        _print_json({"registry": str(reg.root_of(registry)), "models": rows, "unfinished": debris})
        return
    from imgclf.console import print_table
    print_table(f"models in {reg.root_of(registry)}", ["name", "version", "arch", "classes", "accuracy", "onnx",
                                                       "created"],
                [[r["name"], r["version"], r["arch"], r["classes"],
                  "" if r["accuracy"] is None else f"{r['accuracy']:.4f}", "yes" if r["onnx"] else "",
                  r["created"]] for r in rows])
    for d in debris:
        _reporter().warn(d)


@models_app.command("show")
@handle_errors
def models_show(model: str = typer.Argument("latest", help="NAME, NAME:VERSION, NAME:TAG, latest, or a path."),
                registry: Optional[Path] = RegistryOpt):
    """Print a model's metadata (JSON)."""
    from imgclf import registry as reg

    ref = reg.resolve(registry, model)
    _print_json(dict(ref.metadata, path=str(ref.path)))


@models_app.command("rm")
@handle_errors
def models_rm(model: str = typer.Argument(..., help="NAME:VERSION (or NAME for its newest version)."),
              yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
              registry: Optional[Path] = RegistryOpt):
    """Remove one model version from the registry."""
    from imgclf import registry as reg

    ref = reg.resolve(registry, model)
    if not yes:
        if not sys.stdin.isatty():
            from imgclf.errors import UsageError
            raise UsageError(f"not removing {ref.label} without confirmation: pass --yes")
        typer.confirm(f"remove {ref.label} ({ref.path})?", abort=True, err=True)
    path = reg.remove(registry, model)
    _reporter().info(f"removed {ref.label} ({path})")


@models_app.command("clean")
@handle_errors
def models_clean(yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
                 registry: Optional[Path] = RegistryOpt):
    """Delete interrupted runs (their process has ended); after this they can no longer be resumed."""
    from imgclf import registry as reg

    stale = [(run, info) for run, info, alive in reg.unfinished_runs(registry) if not alive]
    if not stale:
        _reporter().info("nothing to clean")
        return
    for run, info in stale:
        _reporter().info(f"unfinished run {run.name} ({info.get('epochs_done', 0)} epochs done)")
    if not yes:
        if not sys.stdin.isatty():
            from imgclf.errors import UsageError
            raise UsageError(f"not deleting {len(stale)} unfinished run(s) without confirmation: pass --yes")
        typer.confirm(f"delete {len(stale)} unfinished run(s)?", abort=True, err=True)
    removed = reg.clean(registry)
    _reporter().info(f"deleted {len(removed)} unfinished run(s)")


@models_app.command("tag")
@handle_errors
def models_tag(model: str = typer.Argument(..., help="NAME:VERSION to tag."),
               alias: str = typer.Argument(..., help="Tag, used as NAME:TAG (e.g. prod)."),
               registry: Optional[Path] = RegistryOpt):
    """Give a model version an alias: NAME:ALIAS then resolves to it."""
    from imgclf import registry as reg

    ref = reg.set_tag(registry, model, alias)
    _reporter().info(f"{ref.metadata['name']}:{alias} -> version {ref.metadata['version']}")


def main():
    app()


if __name__ == "__main__":
    main()
