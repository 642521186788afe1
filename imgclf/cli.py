"""The `imgclf` command line: each command parses, makes one library call, renders.

Heavy libraries (TensorFlow, onnxruntime, scikit-learn) are imported inside the commands, so
`imgclf --help` stays fast. Defaults come from imgclf/config.py (TrainConfig and the command defaults);
options with a fixed set of values are click choices. Errors become `error: <one line>` on stderr and a
non-zero exit code here (handle_errors): 2 for usage errors, 1 for data and model errors, 130 for Ctrl-C.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Literal, Optional

import typer

from imgclf import config as C
from imgclf.architectures import names as architecture_names
from imgclf.distribute import DEFAULT_CLUSTER_TIMEOUT, MODES as DISTRIBUTE_MODES  # no TensorFlow
from imgclf.errors import ImgclfError

TRAIN = C.TrainConfig()  # the defaults of `imgclf train`

Arch = Literal[(C.AUTO_ARCH,) + tuple(architecture_names())]
Policy = Literal[tuple(C.AUGMENT_POLICIES)]
Flip = Literal[C.FLIP_MODES]
SplitMode = Literal[C.SPLIT_MODES]
Backend = Literal[C.BACKENDS]
ClassWeight = Literal[C.CLASS_WEIGHTS]
Calibrate = Literal[C.CALIBRATION_METHODS]
LrSchedule = Literal[C.LR_SCHEDULES]
OutFormat = Literal[C.OUTPUT_FORMATS]
TableOrJson = Literal["table", "json"]
Quantize = Literal[C.QUANTIZE_MODES]
Precision = Literal[C.PRECISIONS]
Distribute = Literal[DISTRIBUTE_MODES]

app = typer.Typer(
    name="imgclf", no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Image classifiers from a folder of class folders: split, augment, train, evaluate, predict, "
         "export to ONNX, and a model registry on disk.",
    context_settings={"help_option_names": ["-h", "--help"]})
models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The model registry: list, show, tag and remove models, write model cards.")
app.add_typer(models_app, name="models")


def complete_model(ctx: typer.Context, incomplete: str) -> List[str]:
    """Shell completion of MODEL: latest, NAME, NAME:VERSION and NAME:TAG from the registry."""
    from imgclf import registry as reg

    root = ctx.params.get("registry") or None
    try:
        models, _ = reg.list_models(root)
    except OSError:
        return []
    found = ["latest"]
    for m in models:
        name = m.metadata.get("name")
        found += [name, f"{name}:{m.metadata.get('version')}"]
        found += [f"{name}:{tag}" for tag in reg.tags(reg.root_of(root), name)]
    return [c for c in dict.fromkeys(found) if c.startswith(incomplete)]


RegistryOpt = typer.Option(None, "--registry", envvar="IMGCLF_HOME", metavar="DIR",
                           help="Registry root (default: $IMGCLF_HOME, else a per-user data folder).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress or log lines on stderr (warnings still show).")
MODEL_HELP = "NAME, NAME:VERSION, NAME:TAG, latest, or a model path."
# the augmentation options that `augment` and `train` share (unset: the policy's value)
FlipOpt = typer.Option(None, help="Mirroring (none for digits and text).")
RotateOpt = typer.Option(None, help="Max rotation, degrees.")
ShiftOpt = typer.Option(None, help="Max shift, fraction of the size.")
ShiftPxOpt = typer.Option(None, "--shift-px", help="Max shift in whole pixels, zero-filled (no resampling).")
ZoomOpt = typer.Option(None, help="Max zoom, fraction.")
BrightnessOpt = typer.Option(None, help="Max brightness change, fraction.")
ContrastOpt = typer.Option(None, help="Max contrast change, fraction.")
HueOpt = typer.Option(None, help="Max hue rotation, fraction of the colour wheel.")
SaturationOpt = typer.Option(None, help="Max saturation change, fraction.")
GrayscaleOpt = typer.Option(None, help="Probability of turning an image gray.")
RandconvOpt = typer.Option(None, help="Probability of restyling an image by a random convolution (texture, "
                                      "shading, colours; shapes kept).")
CropOpt = typer.Option(None, help="Random resized crop: keep a random rectangle of at least this share of the "
                                  "image's area (aspect 3/4 to 4/3), resized back; 0 = off.")


def ModelArg(default=..., help: str = MODEL_HELP):  # noqa: N802 (reads like typer.Argument)
    return typer.Argument(default, help=help, autocompletion=complete_model, metavar="MODEL")


@app.callback()
def main_options(verbose: bool = typer.Option(False, "--verbose", "-v",
                                              help="Also show TensorFlow's own start-up and log lines.")):
    if verbose:
        from imgclf.tf_quiet import VERBOSE_ENV
        os.environ[VERBOSE_ENV] = "1"


def handle_errors(fn):
    """Every command: ImgclfError -> one line on stderr + its exit code; Ctrl-C -> 130. No tracebacks."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from imgclf.console import error
        try:
            return fn(*args, **kwargs)
        except ImgclfError as e:
            error(str(e))
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130)
        except BrokenPipeError:  # `imgclf predict ... | head -1`: the reader has all it wanted
            sys.stderr.close()
            raise typer.Exit(0)
        except MemoryError:
            error("out of memory (try a smaller --batch-size or --image-size)")
            raise typer.Exit(1)
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
          val: float = typer.Option(C.SPLIT_VAL, help="Fraction of each class for validation."),
          test: float = typer.Option(C.SPLIT_TEST, help="Fraction of each class for test."),
          seed: int = typer.Option(C.DEFAULT_SEED, help="Random seed: the same seed gives the same split."),
          mode: SplitMode = typer.Option(C.SPLIT_MODE, help="How files are placed in DEST."),
          force: bool = typer.Option(False, "--force", help="Replace train/, val/, test/ in a non-empty DEST."),
          format: TableOrJson = typer.Option(C.OUTPUT_FORMAT, "--format"),
          quiet: bool = QuietOpt):
    """Split a class-folder tree into train/val/test, stratified and reproducible, with a manifest."""
    from imgclf.data.split import MANIFEST, split_dataset

    rep = _reporter(quiet)
    with rep.progress("placing files", total=None) as advance:
        result = split_dataset(src, dest, val=val, test=test, seed=seed, mode=mode, force=force, progress=advance)
    for p in result.dataset.problems:
        rep.warn(f"skipped {p.path}: {p.reason}")
    if format == "json":
        _print_json({"dest": result.dest, "counts": result.counts, "skipped": len(result.dataset.problems),
                     "synthetic_in_train": len(result.dataset.synthetic)})
        return
    from imgclf.console import print_table
    names = result.dataset.class_names
    rows = [[c] + [result.counts[s][c] for s in ("train", "val", "test")] for c in names]
    rows.append(["total"] + [sum(result.counts[s].values()) for s in ("train", "val", "test")])
    print_table(f"split of {src} -> {dest}", ["class", "train", "val", "test"], rows)
    if result.dataset.synthetic:
        rep.info(f"{len(result.dataset.synthetic)} synthetic images (imgclf synth) kept in train/ only")
    rep.info(f"manifest: {Path(dest) / MANIFEST}")


# ------------------------------------------------------------------------------------------------ scan
@app.command()
@handle_errors
def scan(data: Path = typer.Argument(..., help="Folder of class folders, or a split root."),
         format: TableOrJson = typer.Option(C.OUTPUT_FORMAT, "--format"),
         duplicates: bool = typer.Option(True, help="Look for identical files (content hash)."),
         quiet: bool = QuietOpt):
    """Check a dataset: classes and counts, image sizes and modes, and every problem file with its reason."""
    from imgclf.data.scan import dataset_report
    from imgclf.errors import DataError

    report = dataset_report(data, duplicates=duplicates)
    if format == "json":
        _print_json(report)
    else:
        from imgclf.console import print_scan_report
        print_scan_report(report)
        if report["empty_classes"]:
            _reporter().warn(f"empty class folders (not classes): {', '.join(report['empty_classes'])}")
    if not report["usable"]:
        raise DataError(f"{data}: not usable for training ({report['verdict']})")


# --------------------------------------------------------------------------------------------- augment
@app.command()
@handle_errors
def augment(src: Path = typer.Argument(..., help="Class-folder tree, or a split root (only train/ is augmented)."),
            dest: Path = typer.Argument(..., help="Output folder (originals are copied there too)."),
            per_image: Optional[int] = typer.Option(None, help="New images per original."),
            target_per_class: Optional[int] = typer.Option(None, help="Top each class up to N images."),
            policy: Policy = typer.Option(C.AUGMENT_POLICY, help="Augmentation policy (the options below override "
                                                                 "it)."),
            flip: Optional[Flip] = FlipOpt,
            rotate: Optional[float] = RotateOpt,
            shift: Optional[float] = ShiftOpt,
            shift_px: Optional[int] = ShiftPxOpt,
            zoom: Optional[float] = ZoomOpt,
            brightness: Optional[float] = BrightnessOpt,
            contrast: Optional[float] = ContrastOpt,
            hue: Optional[float] = HueOpt,
            saturation: Optional[float] = SaturationOpt,
            grayscale: Optional[float] = GrayscaleOpt,
            randconv: Optional[float] = RandconvOpt,
            crop: Optional[float] = CropOpt,
            seed: int = typer.Option(C.DEFAULT_SEED, help="Random seed."),
            mode: SplitMode = typer.Option(C.SPLIT_MODE, help="How originals are placed in DEST."),
            force: bool = typer.Option(False, "--force", help="Write into a non-empty DEST."),
            quiet: bool = QuietOpt):
    """Write augmented copies of images to new files (offline augmentation), class folders preserved."""
    from imgclf.data.augment import augment_folder

    cfg = C.AugmentConfig.from_options(policy, option="--policy", flip=flip, rotate=rotate, shift=shift, zoom=zoom,
                                       brightness=brightness, contrast=contrast, hue=hue, saturation=saturation,
                                       grayscale=grayscale, shift_px=shift_px, randconv=randconv,
                                       crop=crop)
    rep = _reporter(quiet)
    with rep.progress("augmenting", total=None) as advance:
        result = augment_folder(src, dest, cfg, per_image=per_image, target_per_class=target_per_class,
                                seed=seed, mode=mode, force=force, progress=lambda n, total: advance(n))
    for p in result["problems"]:
        rep.warn(f"skipped {p.path}: {p.reason}")
    rep.info(f"wrote {result['augmented']} augmented images and {result['originals']} originals to {dest}")
    _print_json({k: v for k, v in result.items() if k != "problems"} | {"skipped": len(result["problems"])})


# ----------------------------------------------------------------------------------------------- synth
@app.command()
@handle_errors
def synth(data: Optional[Path] = typer.Argument(None, help="Class-folder tree, or a split root (its train/ "
                                                           "only); with --from, leave it out."),
          out: Optional[Path] = typer.Argument(None, help="Output folder: OUT/<class>/synth_<n>.png and "
                                                          "OUT/synth_grid.png (not inside DATA)."),
          from_model: Optional[str] = typer.Option(None, "--from", metavar="NAME", autocompletion=complete_model,
                                                   help="Make images with a saved generator instead of "
                                                        "training one (then give only OUT)."),
          classes: Optional[str] = typer.Option(None, metavar="A,B", help="Only these classes (default: all)."),
          target_per_class: Optional[int] = typer.Option(None, metavar="N", help="Top each class up to N "
                                                         "images, real ones counted (default: the largest "
                                                         "class's count)."),
          per_class: Optional[int] = typer.Option(None, metavar="N", help="N new images per class."),
          epochs: Optional[int] = typer.Option(None, help="GAN training epochs (default: about "
                                                          f"{C.SYNTH_STEPS:,} steps of {C.SYNTH_BATCH_SIZE})."),
          image_size: Optional[int] = typer.Option(None, help="Square size the GAN makes: 4-8 px doubled, "
                                                              "e.g. 28, 32, 64 (default: the data's size, at "
                                                              f"most {C.SYNTH_MAX_DEFAULT_SIZE})."),
          seed: int = typer.Option(C.DEFAULT_SEED, help="Random seed (training, and each image's noise)."),
          name: Optional[str] = typer.Option(None, help="Registry name of the generator (default: "
                                                        "DATA's folder name + '-synth')."),
          force: bool = typer.Option(False, "--force", help="Replace the synth_ files and grid already in OUT "
                                                            "(default: numbering continues after them)."),
          registry: Optional[Path] = RegistryOpt, format: TableOrJson = typer.Option("table", "--format"),
          quiet: bool = QuietOpt):
    """Synthetic training images for scarce classes from a class-conditional GAN (saved in the registry as
    a generator), with a sample grid. See docs/synthetic.md."""
    from imgclf.errors import UsageError
    from imgclf.synth import synth as run_synth

    if from_model is not None:
        if out is not None:
            raise UsageError("with --from NAME give only OUT (the generator is already trained)")
        data, out = None, data
    if out is None:
        raise UsageError("give DATA and OUT (or --from NAME OUT)")
    result = run_synth(data, out, from_model=from_model, classes=classes, per_class=per_class,
                       target_per_class=target_per_class, epochs=epochs, image_size=image_size, seed=seed,
                       name=name, registry=registry, force=force, reporter=_reporter(quiet))
    if format == "json":
        _print_json({k: v for k, v in result.items() if k != "written"})
        return
    from imgclf.console import print_table
    print_table(f"synthetic images from {result['generator']} in {result['out']}", ["class", "written"],
                list(result["per_class"].items()))


# ----------------------------------------------------------------------------------------------- train
@app.command()
@handle_errors
def train(data: Optional[Path] = typer.Argument(None, help="Split root (train/ + val/ and/or test/) or a "
                                                          "class-folder tree."),
          arch: Arch = typer.Option(TRAIN.arch, help="Model architecture. auto: a pretrained mobilenet_v2 for colour "
                                                     "images of 32 px or more, or when --weights is given; else "
                                                     "cnn (it says which, and why)."),
          epochs: Optional[int] = typer.Option(TRAIN.epochs, help="Maximum epochs (early stopping may stop "
                                                                  "sooner); pretrained: head epochs (default: "
                                                                  f"{C.SCRATCH_DEFAULTS['epochs']} from scratch, "
                                                                  "fewer when the training images number over "
                                                                  f"{C.SCRATCH_IMAGE_BUDGET // C.SCRATCH_DEFAULTS['epochs']:,}"
                                                                  f" (about {C.SCRATCH_IMAGE_BUDGET:,} images "
                                                                  "in all); "
                                                                  f"{C.PRETRAINED_DEFAULTS['epochs']} pretrained)."),
          batch_size: Optional[int] = typer.Option(TRAIN.batch_size, help="Images per batch (default: "
                                                   f"{C.SCRATCH_DEFAULTS['batch_size']}; from scratch "
                                                   f"{C.SCRATCH_LONG_RUN['batch_size']}, with lr "
                                                   f"{C.SCRATCH_LONG_RUN['lr']:g}, in runs of "
                                                   f"{C.COSINE_MIN_STEPS:,} steps or more at that batch; "
                                                   f"pretrained on under {C.PRETRAINED_SMALL_SET['images']:,} "
                                                   f"images {C.PRETRAINED_SMALL_SET['batch_size']})."),
          image_size: Optional[int] = typer.Option(
              TRAIN.image_size, help="Square input size (default: from the data for cnn/mlp, "
              f"{C.PRETRAINED_DEFAULTS['image_size']} for pretrained MobileNet, {C.PHOTO_IMAGE_SIZE} on photos "
              f"(short side {C.PHOTO_MIN_SIDE} px or more), {C.PHOTO_SMALL_SET['image_size']} on under "
              f"{C.PHOTO_SMALL_SET['images']:,} training photos; 224 with --weights none)."),
          channels: Optional[int] = typer.Option(TRAIN.channels, help="1 or 3 (default: 1 when every image is "
                                                                     "grayscale)."),
          lr: Optional[float] = typer.Option(TRAIN.lr, help="Learning rate (Adam; default: "
                                                         f"{C.SCRATCH_DEFAULTS['lr']:g} from scratch, "
                                                         f"{C.SCRATCH_LONG_RUN['lr']:g} with the long runs' "
                                                         "default batch (see --batch-size); "
                                                         f"{C.PRETRAINED_DEFAULTS['lr']:g} pretrained)."),
          lr_schedule: Optional[LrSchedule] = typer.Option(
              TRAIN.lr_schedule, "--lr-schedule", help="plateau: halve the rate when val_loss stalls; cosine: "
              "one warmup epoch, then down to 0 by the last epoch (default: "
              f"{C.SCRATCH_DEFAULTS['lr_schedule']} from scratch, plateau for runs under "
              f"{C.COSINE_MIN_STEPS:,} steps; {C.PRETRAINED_DEFAULTS['lr_schedule']} pretrained)."),
          label_smoothing: Optional[float] = typer.Option(
              TRAIN.label_smoothing, "--label-smoothing", help="Share of each label spread over the other "
              f"classes, 0 to 0.5 (default: {C.SCRATCH_DEFAULTS['label_smoothing']:g} from scratch, "
              f"{C.PRETRAINED_DEFAULTS['label_smoothing']:g} pretrained)."),
          name: Optional[str] = typer.Option(TRAIN.name, help="Registry name (default: the data folder's name)."),
          seed: int = typer.Option(TRAIN.seed, help="Random seed."),
          val_split: float = typer.Option(TRAIN.val_split, help="Held out of the training images when there is "
                                                                "no val/."),
          patience: int = typer.Option(TRAIN.patience, help="Early stopping patience on val_loss (0 = off)."),
          weights: Optional[str] = typer.Option(TRAIN.weights, help="MobileNet: imagenet (default) | none | PATH "
                                                                    "to a backbone .weights.h5 (offline). With "
                                                                    "--arch auto, imagenet or PATH picks "
                                                                    "mobilenet_v2."),
          alpha: float = typer.Option(TRAIN.alpha, help="MobileNet width multiplier."),
          fine_tune_epochs: Optional[int] = typer.Option(
              TRAIN.fine_tune_epochs, help="Pretrained MobileNet: epochs of phase 2 (top of the backbone unfrozen, "
              f"lr/10; default {C.PRETRAINED_DEFAULTS['fine_tune_epochs']}, on photos in sets of under "
              f"{C.PHOTO_SMALL_SET['images']:,} training images {C.PHOTO_SMALL_SET['fine_tune_epochs']})."),
          fine_tune_layers: Optional[float] = typer.Option(
              TRAIN.fine_tune_layers, help="MobileNet phase 2: backbone layers to unfreeze (N, or a fraction < 1; "
              f"default {C.PRETRAINED_DEFAULTS['fine_tune_layers']:g}, on photos in sets of under "
              f"{C.PHOTO_SMALL_SET['images']:,} training images {C.PHOTO_SMALL_SET['fine_tune_layers']:g})."),
          augment: Optional[Policy] = typer.Option(TRAIN.augment_policy, help="Online augmentation policy (the "
                                                                              "options below override it; "
                                                                              f"default: {C.SCRATCH_DEFAULTS['augment_policy']} "
                                                                              "from scratch, "
                                                                              f"{C.PRETRAINED_DEFAULTS['augment_policy']}"
                                                                              " pretrained)."),
          flip: Optional[Flip] = FlipOpt,
          rotate: Optional[float] = RotateOpt,
          shift: Optional[float] = ShiftOpt,
          shift_px: Optional[int] = ShiftPxOpt,
          zoom: Optional[float] = ZoomOpt,
          brightness: Optional[float] = BrightnessOpt,
          contrast: Optional[float] = ContrastOpt,
          hue: Optional[float] = HueOpt,
          saturation: Optional[float] = SaturationOpt,
          grayscale: Optional[float] = GrayscaleOpt,
          randconv: Optional[float] = RandconvOpt,
          crop: Optional[float] = CropOpt,
          class_weight: ClassWeight = typer.Option(TRAIN.class_weight, help="auto: inverse class frequency."),
          memory: Optional[float] = typer.Option(
              TRAIN.memory, help="Weight, 0 to 1, of a vote of the most similar training images (their features "
              "are stored in the model) blended with the classifier's answer; 0 = off (default: "
              f"{C.PRETRAINED_DEFAULTS['memory']:g} pretrained, up to {C.MEMORY_MAX_IMAGES:,} training images; "
              f"{C.SCRATCH_DEFAULTS['memory']:g} from scratch)."),
          mixed_precision: bool = typer.Option(TRAIN.mixed_precision, "--mixed-precision",
                                               help="float16 compute (for GPUs); exports stay float32."),
          calibrate: Calibrate = typer.Option(TRAIN.calibrate, help="temperature: fit the confidence on the "
                                                                    "val split (see `evaluate`)."),
          resume: Optional[str] = typer.Option(None, help="Continue an interrupted run (its id, from "
                                                          "`imgclf models list`)."),
          distribute: Distribute = typer.Option(
              C.DISTRIBUTE_MODE, "--distribute", help="auto: mirrored with several GPUs, multi-worker when "
              "TF_CONFIG names several workers, else none. See docs/distributed.md."),
          cluster_timeout: int = typer.Option(DEFAULT_CLUSTER_TIMEOUT, "--cluster-timeout", metavar="SECONDS",
                                              help="Multi-worker: fail when a worker has not joined, or has "
                                                   "stopped responding, for this long."),
          registry: Optional[Path] = RegistryOpt,
          format: TableOrJson = typer.Option(C.OUTPUT_FORMAT, "--format"),
          quiet: bool = QuietOpt):
    """Train a classifier and save it as a new version in the registry."""
    # long: only by its option list; the body is one TrainConfig and one library call
    from imgclf.errors import UsageError
    from imgclf.train import train as run_train

    if data is None and not resume:
        raise UsageError("give DATA (a folder of class folders) or --resume RUN")
    overrides = {k: v for k, v in dict(flip=flip, rotate=rotate, shift=shift, shift_px=shift_px, zoom=zoom,
                                       brightness=brightness, contrast=contrast, hue=hue, saturation=saturation,
                                       grayscale=grayscale, randconv=randconv, crop=crop).items() if v is not None}
    aug = C.AugmentConfig.from_options(augment or "none", **overrides)  # checked now, resolved with the arch
    cfg = C.TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, image_size=image_size, channels=channels,
                        lr=lr, lr_schedule=lr_schedule, label_smoothing=label_smoothing, seed=seed, val_split=val_split, patience=patience, name=name, weights=weights,
                        alpha=alpha, fine_tune_layers=fine_tune_layers, fine_tune_epochs=fine_tune_epochs,
                        class_weight=class_weight, augment=aug, augment_policy=augment, augment_overrides=overrides,
                        mixed_precision=mixed_precision, calibrate=calibrate, memory=memory)
    meta = run_train(data, cfg, registry_dir=registry, reporter=_reporter(quiet), resume=resume,
                     distribute_mode=distribute, cluster_timeout=cluster_timeout)
    if meta["path"] is None:  # a worker other than the chief: the chief saved the model
        _reporter(quiet).info("training done; the chief (worker 0) saved the model to the registry")
    if format == "json":
        _print_json({"name": meta["name"], "version": meta["version"], "path": meta["path"],
                     "metrics": meta["metrics"]})
        return
    if meta["path"] is None:
        return
    from imgclf.console import print_table
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in meta["metrics"].items()]
    print_table(f"model {meta['name']}:{meta['version']}", ["metric", "value"], rows)
    _reporter(quiet).info(f"saved {meta['path']}")


# -------------------------------------------------------------------------------------------- evaluate
TTA_HELP = ("Test-time augmentation: average each image's probabilities with its left-right mirror's "
            "(2x the model runs; for models trained with flips, as the pretrained default is).")


@app.command()
@handle_errors
def evaluate(model: str = ModelArg(),
             data: Path = typer.Argument(..., help="Split root (uses test/, else val/) or a class-folder tree."),
             out: Optional[Path] = typer.Option(None, help="Folder for the outputs (default: the model's "
                                                           "registry folder, evaluation/)."),
             backend: Backend = typer.Option(C.DEFAULT_BACKEND, help="auto: the ONNX export when there is one."),
             format: TableOrJson = typer.Option(C.OUTPUT_FORMAT, "--format"),
             force: bool = typer.Option(False, "--force", help="Overwrite existing outputs in --out."),
             target_accuracy: Optional[float] = typer.Option(None, metavar="A", help="Also find the lowest "
                                                             "confidence threshold that reaches accuracy A on "
                                                             "this data (for predict --min-confidence)."),
             html: bool = typer.Option(True, "--html/--no-html", help="Write report.html, one self-contained "
                                                                      "page (default), or not."),
             open_report: bool = typer.Option(False, "--open", help="Open report.html in the default browser."),
             report_images: int = typer.Option(C.REPORT_IMAGES, "--report-images", metavar="N",
                                               help="Thumbnails inlined in report.html (mistakes first); the "
                                                    "other images are listed by path."),
             tta: bool = typer.Option(False, "--tta", help=TTA_HELP),
             registry: Optional[Path] = RegistryOpt, quiet: bool = QuietOpt):
    """Accuracy, per-class precision/recall/F1, confusion matrix, misclassified images, calibration (ECE,
    NLL, Brier), risk-coverage, and report.html."""
    from imgclf import registry as reg
    from imgclf.evaluate import OUTPUT_FILES, evaluate as run_eval

    if open_report and not html:
        from imgclf.errors import UsageError
        raise UsageError("--open needs the report: drop --no-html")
    rep = _reporter(quiet)
    report = run_eval(reg.resolve(registry, model), data, out=out, backend=backend, force=force, reporter=rep,
                      html=html, report_images=report_images, target_accuracy=target_accuracy, tta=tta)
    if open_report:
        from imgclf.report import open_in_browser
        open_in_browser(report["report_html"], rep)
    if format == "json":
        _print_json(report)
        return
    from imgclf.console import out_console, print_evaluation
    print_evaluation(report)
    rep.info(f"wrote {', '.join(OUTPUT_FILES)} to {report['outputs']}")
    if html:
        out_console.print(f"report: {report['report_html']}", markup=False, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------- predict
@app.command()
@handle_errors
def predict(images: List[str] = typer.Argument(..., help="Image files, folders (recursive), or - to read "
                                                         "paths from stdin."),
            model: str = typer.Option("latest", "--model", "-m", autocompletion=complete_model,
                                      help="NAME, NAME:VERSION, NAME:TAG, latest, or a path (a model folder, "
                                           "its model.keras, or an exported .onnx file)."),
            top_k: int = typer.Option(C.PREDICT_TOP_K, help="How many (label, probability) pairs per image."),
            format: Optional[OutFormat] = typer.Option(None, "--format", help="Default: table on a terminal, "
                                                                              "else jsonl."),
            backend: Backend = typer.Option(C.DEFAULT_BACKEND, help="auto: the ONNX export when there is one."),
            precision: Precision = typer.Option(C.PREDICT_PRECISION, help="int8: the model's model.int8.onnx "
                                                                         "(from `imgclf export --quantize int8`)."),
            batch_size: int = typer.Option(C.PREDICT_BATCH_SIZE, help="Images per batch."),
            min_confidence: Optional[float] = typer.Option(None, metavar="P", help="Abstain below this top "
                                                           "probability: label null (uncertain in the table), "
                                                           "abstained true; not an error."),
            tta: bool = typer.Option(False, "--tta", help=TTA_HELP),
            registry: Optional[Path] = RegistryOpt):
    """Classify images: one result per image, in input order. Exit code 1 if any image failed."""
    from imgclf import registry as reg
    from imgclf.calibration import check_probability
    from imgclf.predict import check_predict_args, load_classifier, predict_to

    check_predict_args(top_k, batch_size)  # before loading a model
    check_probability("min-confidence", min_confidence)
    fmt = format or ("table" if sys.stdout.isatty() else "jsonl")
    clf = load_classifier(reg.resolve(registry, model), backend, precision, tta=tta)
    failed = predict_to(sys.stdout, images, clf, fmt, top_k=top_k, batch_size=batch_size, min_confidence=min_confidence)
    if failed:
        from imgclf.console import error
        error(f"{failed} image(s) could not be classified")
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------- compare
@app.command()
@handle_errors
def compare(model_a: str = ModelArg(help="Model A (e.g. the one in production)."),
            model_b: str = ModelArg(help="Model B (e.g. the candidate)."),
            data: Path = typer.Argument(..., help="Split root (uses test/, else val/) or a class-folder tree."),
            out: Optional[Path] = typer.Option(None, help="Folder for compare.json, disagreements.csv/.png "
                                                          "(default: B's registry folder, compare/A/)."),
            backend: Backend = typer.Option(C.DEFAULT_BACKEND, help="auto: the ONNX export when there is one."),
            format: TableOrJson = typer.Option(C.OUTPUT_FORMAT, "--format"),
            force: bool = typer.Option(False, "--force", help="Overwrite existing outputs in --out."),
            registry: Optional[Path] = RegistryOpt, quiet: bool = QuietOpt):
    """Compare two models image by image: accuracies, per-class recall, the images only one gets right,
    McNemar's exact test."""
    from imgclf import registry as reg
    from imgclf.compare import OUTPUT_FILES, compare_models

    rep = _reporter(quiet)
    report = compare_models(reg.resolve(registry, model_a), reg.resolve(registry, model_b), data, out=out,
                            backend=backend, force=force, reporter=rep)
    if format == "json":
        _print_json(report)
        return
    from imgclf.console import print_compare
    print_compare(report)
    rep.info(f"wrote {', '.join(OUTPUT_FILES)} to {report['outputs']}")


# ---------------------------------------------------------------------------------------------- export
@app.command()
@handle_errors
def export(model: str = ModelArg("latest", help="NAME, NAME:VERSION, NAME:TAG, latest, or a model folder."),
           format: Literal["onnx"] = typer.Option("onnx", "--format", help="Export format."),
           out: Optional[Path] = typer.Option(None, help="Also write the .onnx file here (with --quantize: the "
                                                         "int8 file)."),
           opset: int = typer.Option(C.EXPORT_OPSET, help="ONNX opset."),
           check: Optional[List[Path]] = typer.Option(None, help="An image for the Keras/ONNX parity check "
                                                                 "(repeat for more; default: the model's own "
                                                                 "sample images). With --quantize: one folder "
                                                                 "of class folders for the agreement check "
                                                                 "(default: the model's test split, else val)."),
           quantize: Optional[Quantize] = typer.Option(None, "--quantize", help="Also write model.int8.onnx "
                                                       "(static QDQ, per-channel), kept only when it passes "
                                                       "the agreement check."),
           calibration: Optional[Path] = typer.Option(None, metavar="DIR", help="--quantize: calibrate on "
                                                      "images of DIR (a split root: its train/; default: "
                                                      "the model's training split)."),
           calibration_images: int = typer.Option(C.QUANTIZE_CALIBRATION_IMAGES, help="--quantize: how many "
                                                  "calibration images (a seeded random choice)."),
           max_accuracy_drop: float = typer.Option(C.QUANTIZE_MAX_ACCURACY_DROP, help="--quantize: refuse the "
                                                   "int8 file when its held-out accuracy is more than this "
                                                   "many points below the float file's."),
           float_fallback: Optional[float] = typer.Option(None, metavar="MARGIN", help="--quantize: also put "
                                                          "the float network in the int8 file and answer in float "
                                                          "the images whose int8 top-1 probability is less than "
                                                          "MARGIN above the second (the only ones whose label int8 "
                                                          "can change). Costs the float network's time on those "
                                                          "images and its weights in the file. Default 0: the "
                                                          "int8 network alone."),
           force: bool = typer.Option(False, "--force", help="Overwrite --out; with --quantize, also keep an "
                                                             "int8 file that fails the agreement check."),
           registry: Optional[Path] = RegistryOpt, quiet: bool = QuietOpt):
    """Export a model to ONNX (class names and preprocessing in its metadata) and verify it against Keras;
    --quantize int8 adds an int8 file checked against the float one on held-out images."""
    from imgclf import registry as reg
    from imgclf.export import export_onnx

    ref = reg.resolve(registry, model)
    if float_fallback is not None and quantize is None:
        from imgclf.errors import UsageError

        raise UsageError("--float-fallback: only with --quantize int8")
    if quantize is not None:
        from imgclf.console import print_int8_report
        from imgclf.errors import UsageError
        from imgclf.quantize import export_int8

        if check and len(check) > 1:
            raise UsageError("--check: with --quantize int8, give one folder of class folders")
        report = export_int8(ref, opset, check=check[0] if check else None, calibration=calibration,
                             calibration_count=calibration_images, max_accuracy_drop=max_accuracy_drop,
                             out=out, force=force, reporter=_reporter(quiet), float_fallback=float_fallback)
        print_int8_report(report, _reporter(quiet))
        sys.stdout.write((report["out"] or report["path"]) + "\n")
        return
    report = export_onnx(ref, out=out, opset=opset, check_paths=[str(c) for c in check] if check else None,
                         force=force)
    _reporter(quiet).info(f"parity check on {report['checked_images']} {report['check_source']}: top-1 agreement "
                          f"{report['top1_agreement']:.3f}, max |dp| {report['max_abs_diff']:.2e}")
    sys.stdout.write((report["out"] or report["path"]) + "\n")


# ---------------------------------------------------------------------------------------------- models
@models_app.command("list")
@handle_errors
def models_list(registry: Optional[Path] = RegistryOpt,
                format: TableOrJson = typer.Option(C.OUTPUT_FORMAT, "--format")):
    """List the models in the registry: classifiers, then image generators (imgclf synth), and any unfinished
    runs."""
    from imgclf import registry as reg

    models, debris = reg.list_models(registry)
    rows = [reg.summary(m) for m in models if m.kind == "classifier"]
    generators = [dict(reg.summary(m), image_size=m.metadata.get("image_size")) for m in models
                  if m.kind == "generator"]
    if not models:  # a new shell without the IMGCLF_HOME of the one that trained them, say
        _reporter().info(f"no models in {reg.root_of(registry)}: train one with `imgclf train DATA`, or "
                         f"{reg.ELSEWHERE_HINT}")
    if format == "json":
        _print_json({"registry": str(reg.root_of(registry)), "models": rows, "generators": generators,
                     "unfinished": debris})
        return
    from imgclf.console import print_models
    print_models(str(reg.root_of(registry)), rows, generators)
    for d in debris:
        _reporter().warn(d)


@models_app.command("show")
@handle_errors
def models_show(model: str = ModelArg("latest"), registry: Optional[Path] = RegistryOpt):
    """Print a model's metadata (JSON), with its model files and their sizes ("files")."""
    from imgclf import registry as reg

    ref = reg.resolve(registry, model)
    _print_json(dict(ref.metadata, path=str(ref.path), files=reg.model_files(ref)))


@models_app.command("card")
@handle_errors
def models_card(model: str = ModelArg("latest"),
                out: Optional[Path] = typer.Option(None, help="Where to write it (a file or a folder; - for "
                                                              "stdout). Default: MODEL_CARD.md in the model's "
                                                              "version folder."),
                force: bool = typer.Option(False, "--force", help="Overwrite an existing card."),
                registry: Optional[Path] = RegistryOpt):
    """Write MODEL_CARD.md: intended use, classes, training data, configuration, metrics, weak classes, files."""
    from imgclf import registry as reg
    from imgclf.modelcard import write_card

    path = write_card(reg.resolve(registry, model), out=out, force=force)
    if path is not None:
        sys.stdout.write(f"{path}\n")


def _confirm(what: str, question: str) -> None:
    """Ask on a terminal; refuse without --yes when nobody can answer."""
    if not sys.stdin.isatty():
        from imgclf.errors import UsageError
        raise UsageError(f"not {what} without confirmation: pass --yes")
    typer.confirm(question, abort=True, err=True)


@models_app.command("rm")
@handle_errors
def models_rm(model: str = ModelArg(help="NAME:VERSION (or NAME for its newest version)."),
              yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
              registry: Optional[Path] = RegistryOpt):
    """Remove one model version from the registry."""
    from imgclf import registry as reg

    ref = reg.resolve(registry, model)
    if not yes:
        _confirm(f"removing {ref.label}", f"remove {ref.label} ({ref.path})?")
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
        _confirm(f"deleting {len(stale)} unfinished run(s)", f"delete {len(stale)} unfinished run(s)?")
    removed = reg.clean(registry)
    _reporter().info(f"deleted {len(removed)} unfinished run(s)")


@models_app.command("tag")
@handle_errors
def models_tag(model: str = ModelArg(help="NAME:VERSION to tag."),
               alias: str = typer.Argument(..., help="Tag, used as NAME:TAG (e.g. prod)."),
               gate: Optional[Path] = typer.Option(None, metavar="DATA", help="Move the tag only if the model, "
                                                   "compared on DATA with the version holding the tag, passes "
                                                   "the limits below (else exit 1, tag unchanged)."),
               max_regressions: Optional[int] = typer.Option(None, metavar="N", help="--gate: at most N images "
                                                             "the current version gets right may turn wrong "
                                                             "(default: no limit)."),
               min_accuracy_delta: float = typer.Option(C.GATE_MIN_ACCURACY_DELTA, metavar="D",
                                                        help="--gate: the accuracy may fall by at most D "
                                                        "(default 0: at least as accurate; negative: must gain "
                                                        "-D)."),
               registry: Optional[Path] = RegistryOpt, quiet: bool = QuietOpt):
    """Give a model version an alias: NAME:ALIAS then resolves to it."""
    from imgclf import registry as reg

    if gate is None:
        if max_regressions is not None or min_accuracy_delta != C.GATE_MIN_ACCURACY_DELTA:
            from imgclf.errors import UsageError
            raise UsageError("--max-regressions and --min-accuracy-delta apply with --gate DATA only")
        ref = reg.set_tag(registry, model, alias)
    else:
        from imgclf.compare import gated_tag
        ref = reg.resolve(registry, gated_tag(registry, model, alias, gate, max_regressions, min_accuracy_delta,
                                              reporter=_reporter(quiet))["tagged"])
    _reporter().info(f"{ref.metadata['name']}:{alias} -> version {ref.metadata['version']}")


def main():
    # one program name however it was started (`imgclf`, `python -m imgclf`): usage lines, completion
    app(prog_name="imgclf")


if __name__ == "__main__":
    main()
