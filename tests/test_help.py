"""`--help` is fast (no TensorFlow import) and shows the options of the contract."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import child_env, cli, installed_imgclf, user_env

COMMANDS = [[], ["split"], ["scan"], ["augment"], ["train"], ["evaluate"], ["predict"], ["export"], ["models"],
            ["models", "list"], ["models", "show"], ["models", "rm"], ["models", "tag"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "imgclf")
def test_help_does_not_import_tensorflow(command):
    code = ("import sys, json; from typer.testing import CliRunner; from imgclf.cli import app; "
            f"r = CliRunner().invoke(app, {command + ['--help']!r}); "
            "print(json.dumps({'code': r.exit_code, 'out': r.output, "
            "'heavy': sorted(m for m in ('tensorflow', 'keras', 'onnxruntime', 'tf2onnx', 'sklearn') "
            "if m in sys.modules)}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["code"] == 0 and "Usage" in res["out"]
    assert res["heavy"] == []


@pytest.mark.timeout(120)
def test_console_script_help_in_a_real_process(tmp_path):
    # the `imgclf` script that pip installed, without PYTHONPATH, outside the repository: as a user runs it
    proc = subprocess.run([str(installed_imgclf()), "--help"], capture_output=True, text=True, timeout=60,
                          env=user_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for cmd in ("split", "scan", "augment", "train", "evaluate", "predict", "export", "models"):
        assert cmd in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command, options", [
    (["split"], ["--val", "--test", "--seed", "--mode", "--force"]),
    (["scan"], ["--format"]),
    (["train"], ["--arch", "--epochs", "--batch-size", "--image-size", "--lr", "--name", "--seed", "--val-split",
                 "--channels", "--resume", "--registry"]),
    (["evaluate"], ["--out", "--format", "--force"]),
    (["predict"], ["--model", "--top-k", "--format", "--backend"]),
    (["export"], ["--format", "--out", "--opset", "--force"]),
    (["models", "rm"], ["--yes"]),
])
def test_help_lists_the_contract_options(command, options):
    r = cli(*command, "--help")
    assert r.exit_code == 0
    for opt in options:
        assert opt in r.output, (command, opt)


def test_no_arguments_shows_help():
    r = cli()
    assert "Usage" in r.output
