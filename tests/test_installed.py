"""The installed `imgclf` command, run as a user runs it: the console script that `pip install` put next to
the interpreter, no PYTHONPATH (the other subprocess tests put the repository on it, which would hide a
broken entry point or a module missing from the package), from a working folder outside the repository."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import installed_imgclf, make_tree, user_env


def run(cwd, *args, input=None, timeout=300):
    return subprocess.run([str(installed_imgclf()), *map(str, args)], capture_output=True, text=True,
                          input=input, cwd=cwd, env=user_env(), timeout=timeout)


@pytest.mark.timeout(600)
def test_installed_command_split_train_export_predict_and_a_closed_pipe(tmp_path):
    make_tree(tmp_path / "raw", {"blue": 10, "green": 10, "red": 10}, mode="RGB", size=(20, 20), seed=4)
    env_reg = ["--registry", tmp_path / "reg"]

    r = run(tmp_path, "split", "raw", "split", "--val", "0.2", "--test", "0.2", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["test"] == {"blue": 2, "green": 2, "red": 2}

    r = run(tmp_path, "train", "split", "--arch", "mlp", "--epochs", 3, "--image-size", 16, "--patience", 0,
            "--name", "colours", "--format", "json", *env_reg)
    assert r.returncode == 0, r.stderr
    assert (json.loads(r.stdout)["name"], json.loads(r.stdout)["version"]) == ("colours", 1)

    r = run(tmp_path, "export", "colours", *env_reg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "reg" / "colours" / "1" / "model.onnx")

    test_images = sorted((tmp_path / "split" / "test").rglob("*.png"))
    r = run(tmp_path, "predict", "--model", "colours", "--backend", "onnx", "--format", "jsonl",
            *test_images, *env_reg)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(p) for p in test_images]
    assert sum(row["label"] == p.parent.name for row, p in zip(rows, test_images)) >= 5   # of 6

    # `imgclf predict ... | head -1`: the reader goes away after one line. Far more output than a pipe holds
    # (64 KiB), one line per batch, so imgclf is still writing when the pipe closes: exit 0, no traceback.
    paths = tmp_path / "paths.txt"
    paths.write_text("".join(f"{p}\n" for p in test_images) * 300)
    with open(paths) as stdin, open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([str(installed_imgclf()), "predict", "-", "--model", "colours", "--backend",
                                 "onnx", "--format", "jsonl", "--batch-size", "1", *map(str, env_reg)],
                                stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path,
                                env=user_env())
        first = proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(timeout=120)
    err = (tmp_path / "stderr.txt").read_text()
    assert json.loads(first)["path"] == str(test_images[0])
    assert code == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err
