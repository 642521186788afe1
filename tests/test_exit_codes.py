"""Exit codes: 2 for a usage error (a bad option or combination), 1 for data and model errors, 0 when the
reader of stdout goes away (`imgclf predict ... | head -1`)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import child_env, cli, error_line, make_tree


@pytest.mark.parametrize("args, word", [
    (["train", "DATA", "--bogus-option"], "--bogus-option"),              # click: no such option
    (["train", "DATA", "--epochs", "many"], "--epochs"),                   # click: not an integer
    (["train", "--registry", "REG"], "--resume"),                          # neither DATA nor --resume
    (["train", "DATA", "--epochs", "0"], "--epochs"),
    (["train", "DATA", "--augment", "extreme"], "--augment"),
    (["split", "DATA", "OUT", "--val", "0.7", "--test", "0.5"], "--val"),
    (["predict", "IMG", "--top-k", "0", "--registry", "REG"], "--top-k"),
    (["export", "colours", "--format", "tflite", "--registry", "REG"], "--format"),
    (["models", "tag", "colours:1", "latest", "--registry", "REG"], "invalid tag"),
])
def test_usage_errors_exit_2(trained, tmp_path, args, word):
    subst = {"DATA": trained.data, "OUT": tmp_path / "out", "REG": trained.registry, "IMG": trained.data / "red"}
    r = cli(*[subst.get(a, a) for a in args])
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert word in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("args, word", [
    (["scan", "MISSING"], "not found"),
    (["train", "MISSING", "--registry", "REG"], "not found"),
    (["train", "ONECLASS", "--registry", "REG"], "one class"),
    (["evaluate", "nope", "DATA", "--registry", "REG"], "unknown model"),
    (["predict", "IMG", "--model", "nope", "--registry", "REG"], "unknown model"),
    (["predict", "EMPTY", "--registry", "REG"], "nothing to classify"),
    (["export", "colours:9", "--registry", "REG"], "no version 9"),
])
def test_data_and_model_errors_exit_1(trained, tmp_path, args, word):
    make_tree(tmp_path / "one", {"red": 3})
    (tmp_path / "empty").mkdir()
    subst = {"DATA": trained.data, "REG": trained.registry, "IMG": trained.data / "red" / "img_000.png",
             "MISSING": tmp_path / "missing", "ONECLASS": tmp_path / "one", "EMPTY": tmp_path / "empty"}
    r = cli(*[subst.get(a, a) for a in args])
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert word in error_line(r)


@pytest.mark.timeout(180)
def test_a_closed_pipe_exits_0_without_a_traceback(exported, tmp_path):
    """`imgclf predict - | head -1`: far more output than a pipe holds, one flushed line per batch, so the
    command is still writing when the reader closes its end."""
    images = sorted(str(p) for p in exported.data.rglob("*.png"))
    paths = tmp_path / "paths.txt"
    paths.write_text("".join(f"{p}\n" for p in images) * 60)
    with open(paths) as stdin, open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "imgclf", "predict", "-", "--registry", str(exported.registry),
                                 "--backend", "onnx", "--format", "jsonl", "--batch-size", "1"],
                                stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, text=True, env=child_env())
        first = proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(timeout=120)
    err = (tmp_path / "stderr.txt").read_text()
    assert json.loads(first)["path"] == images[0]
    assert code == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err
