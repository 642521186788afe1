"""The command line's contract (choices, flags, completion, quiet TensorFlow, README = CI) and the code's
layout (dependencies run one way; the ONNX predict path stays light)."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, child_env, cli, error_line, run_imgclf

CHOICES = {
    ("train", "--arch"): ["auto", "cnn", "mlp", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"],
    ("train", "--augment"): ["none", "pixel", "light", "medium", "style", "heavy"],
    ("train", "--flip"): ["none", "horizontal", "vertical", "both"],
    ("train", "--class-weight"): ["none", "auto"],
    ("split", "--mode"): ["copy", "symlink", "hardlink"],
    ("augment", "--policy"): ["none", "pixel", "light", "medium", "style", "heavy"],
    ("evaluate", "--backend"): ["auto", "keras", "onnx"],
    ("predict", "--backend"): ["auto", "keras", "onnx"],
    ("predict", "--format"): ["table", "json", "jsonl", "csv"],
}


@pytest.mark.parametrize("command,option", sorted(CHOICES))
def test_fixed_choices_are_listed_in_help_and_refused_by_click(command, option, tmp_path):
    values = CHOICES[(command, option)]
    help_text = cli(command, "--help").stdout
    assert f"{option} <{'|'.join(values)}>" in help_text, help_text
    args = {"train": [tmp_path], "split": [tmp_path, tmp_path / "out"], "augment": [tmp_path, tmp_path / "o"],
            "evaluate": ["latest", tmp_path], "predict": [tmp_path]}[command]
    result = cli(command, *args, option, "bogus")
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr and "'bogus' is not one of" in result.stderr, \
        result.stderr
    for v in values:
        assert f"'{v}'" in result.stderr


def test_flags_show_as_flags_not_as_bool_values():
    for command in ("train", "split", "evaluate", "export", "scan"):
        text = cli(command, "--help").stdout
        assert "<bool>" not in text, text
    assert re.search(r"^\s+--mixed-precision\s{2,}", cli("train", "--help").stdout, re.M)
    assert "--duplicates / --no-duplicates" in cli("scan", "--help").stdout


def test_cli_defaults_are_train_configs():
    """`imgclf train --help` shows TrainConfig's defaults (one home for them)."""
    from imgclf.config import TrainConfig

    text = re.sub(r"\s+", " ", cli("train", "--help").stdout)
    d = TrainConfig()
    for option, value in (("--patience", d.patience), ("--val-split", d.val_split), ("--arch", d.arch)):
        assert re.search(re.escape(option) + r" <[^>]*>.*?\[default: " + re.escape(str(value)) + r"\]", text), option
    # issue 14: these depend on how the network starts (config.SCRATCH_DEFAULTS / PRETRAINED_DEFAULTS)
    from imgclf import config as C
    from imgclf.config import PRETRAINED_DEFAULTS as P, SCRATCH_DEFAULTS as S
    assert d.epochs is None and d.lr is None and d.fine_tune_epochs is None and d.augment_policy is None
    assert d.batch_size is None
    L = C.SCRATCH_LONG_RUN
    for option, phrase in (("--epochs", f"default: {S['epochs']} from scratch, fewer when the training images "
                                        f"number over {C.SCRATCH_IMAGE_BUDGET // S['epochs']:,} (about "
                                        f"{C.SCRATCH_IMAGE_BUDGET:,} images in all); {P['epochs']} pretrained"),
                           ("--lr-schedule", f"(default: {S['lr_schedule']} from scratch, plateau for runs "
                                             f"under {C.COSINE_MIN_STEPS:,} steps; {P['lr_schedule']} pretrained)"),
                           ("--label-smoothing", f"(default: {S['label_smoothing']:g} from scratch, "
                                                 f"{P['label_smoothing']:g} pretrained)"),
                           ("--lr", f"default: {S['lr']:g} from scratch, {L['lr']:g} with the long runs' default "
                                    f"batch (see --batch-size); {P['lr']:g} pretrained"),
                           ("--batch-size", f"(default: {S['batch_size']}; from scratch {L['batch_size']}, with lr "
                                            f"{L['lr']:g}, in runs of {C.COSINE_MIN_STEPS:,} steps or more at that "
                                            f"batch; pretrained on under {C.PRETRAINED_SMALL_SET['images']:,} images "
                                            f"{C.PRETRAINED_SMALL_SET['batch_size']})"),
                           ("--fine-tune-epochs", f"default {P['fine_tune_epochs']}"),
                           ("--memory", f"(default: {P['memory']:g} pretrained, up to {C.MEMORY_MAX_IMAGES:,} "
                                        f"training images; {S['memory']:g} from scratch)"),
                           ("--augment", f"default: {S['augment_policy']} from scratch, "
                                         f"{P['augment_policy']} pretrained")):
        assert re.search(re.escape(option) + r" <[^>]*> [^-]*?" + re.escape(phrase), text), option


def test_library_checks_arguments_like_the_cli(exported):
    """The library refuses what the CLI refuses, with the same message (no quiet clamping)."""
    from imgclf import registry
    from imgclf.errors import UsageError
    from imgclf.predict import load_classifier, predict_batches

    classifier = load_classifier(registry.resolve(exported.registry, "colours"), "onnx")
    for kwargs, message in (({"top_k": 0}, "--top-k must be at least 1, got 0"),
                            ({"batch_size": 0}, "--batch-size must be at least 1, got 0")):
        with pytest.raises(UsageError, match=re.escape(message)):
            next(predict_batches(classifier, ["x.png"], **kwargs))


def test_model_names_complete_from_the_registry(registry_copy):
    """Shell completion (typer's protocol, as `imgclf --install-completion` sets it up) of MODEL arguments
    lists the registry's names, versions and tags, through the installed console script."""
    exe = Path(sys.executable).parent / "imgclf"
    assert exe.is_file(), f"{exe}: the imgclf console script is not installed in this environment"
    assert cli("models", "tag", "colours:1", "stable", "--registry", registry_copy).exit_code == 0
    env = child_env() | {"_IMGCLF_COMPLETE": "complete_bash", "IMGCLF_HOME": str(registry_copy)}
    for words, cword, expect in (("imgclf predict x.png --model ", 4, {"latest", "colours", "colours:stable"}),
                                 ("imgclf evaluate ", 2, {"colours:1"}),
                                 ("imgclf train --arch mob", 3, {"mobilenet_v2", "mobilenet_v3_small"})):
        out = subprocess.run([str(exe)], env=env | {"COMP_WORDS": words, "COMP_CWORD": str(cword)},
                             capture_output=True, text=True, timeout=60)
        found = set(out.stdout.split())
        assert expect <= found, (words, out.stdout, out.stderr)
    assert "cnn" not in found


def test_completion_can_be_installed():
    assert "--install-completion" in cli("--help").stdout
    # the shell named, never detected from the parent process (pytest's parent may be anything)
    out = subprocess.run([sys.executable, "-m", "imgclf", "--show-completion=bash"], capture_output=True,
                         text=True, timeout=60, env=child_env() | {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert out.returncode == 0 and "complete" in out.stdout and "_IMGCLF_COMPLETE" in out.stdout.upper(), out


def test_tensorflow_start_up_lines_are_hidden_unless_verbose(tmp_path, colour_data):
    """TensorFlow's C++ banner goes straight to fd 2; imgclf hides it (our own lines still show)."""
    quiet = run_imgclf("train", colour_data, "--epochs", "1", "--image-size", "16", "--registry", tmp_path / "r",
                       "--arch", "mlp")
    assert quiet.returncode == 0, quiet.stderr
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
        assert noise not in quiet.stderr, quiet.stderr
    assert "train epoch 1/1" in quiet.stderr
    env = child_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    loud = subprocess.run([sys.executable, "-m", "imgclf", "--verbose", "train", str(colour_data), "--epochs", "1",
                           "--image-size", "16", "--registry", str(tmp_path / "r"), "--arch", "mlp"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert loud.returncode == 0, loud.stderr
    assert "absl::InitializeLog" in loud.stderr or "oneDNN" in loud.stderr, loud.stderr


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^\*\*2\. .*?```bash\n(.+?)\n```", readme, re.S | re.M)
    assert len(blocks) == 1, "README.md must give the test command as step **2.** in a bash block"
    ci = [l.strip() for l in (REPO / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert blocks[0].strip() in ci, (blocks[0], ci)
    assert "venv" in blocks[0], "the test command must work where pip refuses system installs (PEP 668)"


# ------------------------------------------------------------------------------------------- layout

def _import_graph():
    """module -> imgclf modules it imports (at module level or inside functions)."""
    pkg = REPO / "imgclf"
    mods = {}
    for f in pkg.rglob("*.py"):
        name = ".".join(f.relative_to(REPO).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    graph = {}
    for m, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgclf"):
                for a in node.names:
                    deps.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("imgclf")}
        # a package and its own modules (the architecture registry) are one unit
        graph[m] = {d for d in deps if d in mods and d != m and not d.startswith(m + ".")
                    and not m.startswith(d + ".")}
    return graph


def test_imports_run_one_way():
    graph = _import_graph()
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_onnx_predict_path_imports_neither_tensorflow_nor_the_tf_data_module(exported):
    code = ("import sys, io\n"
            "from imgclf import registry\n"
            "from imgclf.predict import load_classifier, predict_to\n"
            f"clf = load_classifier(registry.resolve({str(exported.registry)!r}, 'colours'), 'onnx')\n"
            f"predict_to(io.StringIO(), [{str(exported.data / 'red' / 'img_000.png')!r}], clf, 'jsonl')\n"
            "bad = [m for m in ('tensorflow', 'keras', 'imgclf.data.pipeline', 'imgclf.export') if m in sys.modules]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_stdlib_inspect_is_not_shadowed():
    assert not (REPO / "imgclf" / "inspect.py").exists()


def test_unknown_preprocessing_in_metadata_is_a_clear_error(trained, tmp_path):
    """A spec this version cannot honour is refused, naming the file, instead of being silently ignored."""
    import json
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(trained.path, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["preprocessing"]["color_order"] = "BGR"
    (copy / "metadata.json").write_text(json.dumps(meta))
    line = error_line(cli("predict", trained.data / "red" / "img_000.png", "--model", copy, "--backend", "keras"))
    assert str(copy / "metadata.json") in line and "color_order 'BGR' is not supported" in line


def test_resize_filter_of_the_spec_is_honoured(tmp_path):
    import numpy as np
    from PIL import Image

    from imgclf.preprocessing import PreprocessingSpec, load_image

    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    near = load_image(path, PreprocessingSpec((16, 16), 3, resize="nearest"))
    bil = load_image(path, PreprocessingSpec((16, 16), 3))
    with Image.open(path) as im:
        expected = np.asarray(im.resize((16, 16), Image.Resampling.NEAREST))
    assert np.array_equal(near, expected) and not np.array_equal(near, bil)
    with pytest.raises(ValueError, match="unknown resize filter 'sideways'"):
        PreprocessingSpec.from_dict({"image_size": [16, 16], "channels": 3, "resize": "sideways"})
