"""Terminal rendering only: logs and progress to stderr (rich), data tables to stdout."""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.markup import escape
from rich.table import Table

#: the width of output that is not a terminal (a pipe, a file, a CI log): wide enough that no headline, log
#: line or table cell (a path) is ever wrapped; the tables are only as wide as their contents
UNWRAPPED_WIDTH = 10_000


class _Console(Console):
    """A rich Console that wraps only on a terminal (rich's default elsewhere is 80 columns, or
    $COLUMNS: a path in a table would be folded over several lines of a log)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)


err_console = _Console(stderr=True, highlight=False)
out_console = _Console(highlight=False)


class Reporter:
    """Logs, warnings and progress bars, all on stderr."""

    def __init__(self, quiet: bool = False, console: Optional[Console] = None):
        self.quiet = quiet
        self.console = console or err_console

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg, markup=False, soft_wrap=True)

    def warn(self, msg: str) -> None:
        self.console.print(f"warning: {msg}", style="yellow", markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: Optional[int]):
        """Yields advance(completed) for a determinate bar."""
        if self.quiet or not self.console.is_terminal:
            yield lambda n: None
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=self.console, transient=True) as p:
            task = p.add_task(description, total=total)
            yield lambda n: p.update(task, completed=n)

    def epoch_bar(self, description: str, steps: Optional[int]):
        return _EpochBar(self, description, steps)


class _EpochBar:
    def __init__(self, reporter: Reporter, description: str, steps: Optional[int]):
        self.reporter, self.description, self.steps = reporter, description, steps
        self.p = None

    def __enter__(self):
        if not self.reporter.quiet and self.reporter.console.is_terminal:
            self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("eta"),
                              TimeRemainingColumn(), console=self.reporter.console, transient=True)
            self.p.__enter__()
            self.task = self.p.add_task(self.description, total=self.steps, metrics="")
        return self

    def update(self, step: int, metrics: str) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=step, metrics=metrics)

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.__exit__(*exc)
            self.p = None


def print_table(title: Optional[str], columns: Sequence[str], rows: List[Sequence], console: Console = None):
    console = console or out_console
    if title:  # on its own line: a table title wraps to the table's width
        console.print(title, style="bold", markup=False, soft_wrap=True)
    table = Table(show_lines=False)
    rows = [[escape(str(v)) if v is not None else "" for v in r] for r in rows]
    for c in columns:
        table.add_column(str(c), overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def print_confusion(class_names: Sequence[str], matrix, console: Console = None):
    console = console or out_console
    console.print("confusion matrix (rows: true, columns: predicted)", style="bold")
    # narrow terminal: number the columns (the row labels carry the numbers) rather than cut the names
    numbered = sum(len(str(c)) + 3 for c in class_names) + max(len(str(c)) for c in class_names) + 8 > console.width
    table = Table()
    table.add_column("true \\ pred", style="bold")
    for i, c in enumerate(class_names):
        table.add_column(str(i) if numbered else str(c), justify="right")
    for i, (name, row) in enumerate(zip(class_names, matrix)):
        if numbered:
            name = f"{i} {name}"
        cells = []
        for j, v in enumerate(row):
            style = "green" if j == i else ("red" if v else "dim")
            cells.append(f"[{style}]{v}[/{style}]")
        table.add_row(escape(str(name)), *cells)
    console.print(table)


def print_predictions(rows: List[dict], top_k: int, console: Console = None) -> None:
    """`imgclf predict` on a terminal: one row per image; failures say why in the label column."""
    print_table(None, ["path", "label", "confidence", f"top {top_k}"],
                [[r["path"], "uncertain" if r.get("abstained") else r["label"] or f"error: {r['error']}",
                  "" if r["confidence"] is None else f"{r['confidence']:.3f}",
                  ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"])] for r in rows], console)


def error(message: str) -> None:
    """The one-line `error: ...` on stderr."""
    err_console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)


def print_scan_report(report: dict, console: Console = None) -> None:
    """`imgclf scan` on a terminal: counts per split, sizes, modes, problem files."""
    for split_name, info in report["splits"].items():
        where = report["data"] if split_name == "." else split_name
        synthetic = info.get("synthetic_per_class") or {}
        if synthetic:  # made by `imgclf synth`: shown apart, they must stay in train/
            print_table(f"{where}: {info['images']} usable images, {info['synthetic']} of them synthetic",
                        ["class", "images", "synthetic"],
                        [(c, n, synthetic.get(c, 0)) for c, n in info["per_class"].items()], console)
        else:
            print_table(f"{where}: {info['images']} usable images", ["class", "images"],
                        list(info["per_class"].items()), console)
    print_table("image sizes (width x height)", ["size", "images"], report["sizes"][:10], console)
    print_table("image modes", ["mode", "images"], report["modes"], console)
    if report["problems"]:
        print_table(f"{len(report['problems'])} problem files", ["file", "reason"],
                    [(p["path"], p["reason"]) for p in report["problems"]], console)


def print_evaluation(report: dict, console: Console = None) -> None:
    """`imgclf evaluate` on a terminal: headline, per-class table, confusion matrix, worst mistakes."""
    console = console or out_console
    console.print(f"model {escape(report['model'])} on {escape(report['data'])} ({report['images']} images, "
                  f"{report['backend']}): accuracy [bold]{report['accuracy']:.4f}[/bold], "
                  f"macro F1 {report['macro_f1']:.4f}")
    print_table("per class", ["class", "precision", "recall", "f1", "support"],
                [[r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
                 for r in report["per_class"]], console)
    print_confusion(report["class_names"], report["confusion_matrix"], console)
    worst = report["misclassified"][:10]
    if worst:
        print_table(f"most confident mistakes ({len(report['misclassified'])} in all)",
                    ["path", "true", "predicted", "confidence"],
                    [[m["path"], m["true"], m["predicted"], f"{m['confidence']:.3f}"] for m in worst], console)
    if "calibration" in report:
        print_calibration(report, console)


def print_calibration(report: dict, console: Console = None):
    """`imgclf evaluate`: calibration before/after, the risk-coverage table and the --target-accuracy answer."""
    console = console or out_console
    cal = report["calibration"]
    print_table(f"confidence calibration (temperature {cal['temperature']:.3f})", ["metric", "uncalibrated",
                                                                                    "calibrated"],
                [[f"ECE ({cal['bins']} bins)", f"{cal['ece_uncalibrated']:.4f}", f"{cal['ece']:.4f}"],
                 ["NLL", f"{cal['nll_uncalibrated']:.4f}", f"{cal['nll']:.4f}"],
                 ["Brier", f"{cal['brier_uncalibrated']:.4f}", f"{cal['brier']:.4f}"]], console=console)
    print_table("risk-coverage (images whose top probability >= threshold)", ["threshold", "coverage", "accuracy"],
                [[f"{r['threshold']:.2f}", f"{r['coverage']:.3f}",
                  "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"] for r in report["risk_coverage"]],
                console=console)
    target = report.get("target_accuracy")
    if target:
        if target["threshold"] is None:
            console.print(f"no confidence threshold reaches accuracy {target['target']:.4f} on this data",
                          markup=False, soft_wrap=True)
        else:
            console.print(f"accuracy {target['target']:.4f}: lowest threshold {target['threshold']:.6f} keeps "
                          f"{target['coverage']:.1%} of the images (accuracy {target['accuracy']:.4f} on them)",
                          markup=False, soft_wrap=True)


def print_compare(report: dict, console: Console = None, max_rows: int = 10):
    """`imgclf compare`: both accuracies, the 2x2 agreement counts, McNemar's p, per-class recall, disagreements."""
    console = console or out_console
    console.print(f"A = {report['model_a']}, B = {report['model_b']} on {report['data']} ({report['images']} "
                  f"images): accuracy A {report['accuracy_a']:.4f}, B {report['accuracy_b']:.4f} "
                  f"({report['accuracy_delta']:+.4f})", markup=False, soft_wrap=True)
    print_table("image by image", ["", "B right", "B wrong"],
                [["A right", report["both_right"], report["only_a_right"]],
                 ["A wrong", report["only_b_right"], report["both_wrong"]]], console=console)
    console.print(f"McNemar exact test on the {report['only_a_right'] + report['only_b_right']} images only one "
                  f"gets right: p = {report['mcnemar_p']:.4g}", markup=False, soft_wrap=True)
    print_table("recall per class", ["class", "A", "B", "B - A"],
                [[r["class"], "" if r["recall_a"] is None else f"{r['recall_a']:.3f}",
                  "" if r["recall_b"] is None else f"{r['recall_b']:.3f}",
                  "" if r["delta"] is None else f"{r['delta']:+.3f}"] for r in report["per_class"]], console=console)
    rows = report["disagreements"]
    if rows:
        print_table(f"images only one model gets right ({len(rows)}; first {min(len(rows), max_rows)})",
                    ["path", "true", "A", "B"],
                    [[r["path"], r["true"], f"{r['pred_a']} {r['conf_a']:.3f}", f"{r['pred_b']} {r['conf_b']:.3f}"]
                     for r in rows[:max_rows]], console=console)


def print_int8_report(report: dict, reporter: Reporter) -> None:
    """The log lines of `imgclf export --quantize int8` (stderr) once the int8 file is saved: the check, the sizes."""
    c = report["check"]
    reporter.info(f"int8 check on {c['images']} held-out images of {c['source']}: accuracy fp32 "
                  f"{c['fp32_accuracy']:.4f}, int8 {c['int8_accuracy']:.4f} (drop {c['accuracy_drop_points']:.2f} "
                  f"points, limit {c['max_accuracy_drop']:g}); top-1 agreement {c['top1_agreement']:.4f}, max |dp| "
                  f"{c['max_abs_diff']:.2e}; {c['changed_labels']} label(s) changed ({c['changed_csv']})")
    fb = c.get("float_fallback")
    if fb:
        reporter.info(f"float fallback: {100 * fb['answered_in_float']:.1f}% of the check images answered in float "
                      f"(int8 top-2 margin below {fb['margin']:g}); the int8 network alone agrees "
                      f"{fb['int8_alone_top1_agreement']:.4f} ({fb['int8_alone_changed_labels']} changed) in a "
                      f"{fb['int8_alone_bytes'] / 2**20:.2f} MiB file (--float-fallback 0)")
    if not c["passed"]:
        reporter.warn("the int8 file failed the agreement check and was kept because of --force")
    reporter.info(f"{report['path']}: {report['bytes'] / 2**20:.2f} MiB, fp32 {report['fp32_bytes'] / 2**20:.2f} "
                  f"MiB ({report['fp32_bytes'] / report['bytes']:.1f}x smaller); calibrated on "
                  f"{report['calibration_images']} images of {report['calibration_source']}")


def print_models(root: str, classifiers: List[dict], generators: List[dict], console: Console = None) -> None:
    """`imgclf models list`: the classifiers, then the image generators of `imgclf synth` apart."""
    print_table(f"models in {root}", ["name", "version", "arch", "classes", "accuracy", "onnx", "created"],
                [[r["name"], r["version"], r["arch"], r["classes"],
                  "" if r["accuracy"] is None else f"{r['accuracy']:.4f}", "yes" if r["onnx"] else "",
                  r["created"]] for r in classifiers], console)
    if generators:
        print_table(f"image generators (imgclf synth) in {root}", ["name", "version", "classes", "image size",
                                                                   "created"],
                    [[r["name"], r["version"], r["classes"], r["image_size"], r["created"]] for r in generators],
                    console)
