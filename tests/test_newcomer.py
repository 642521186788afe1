"""The rough edges a new user hits: output that is not a terminal is never wrapped, an empty registry
says where it looked and how to look elsewhere, and evaluating a model on its own training images warns."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import cli, error_line, make_tree, table_rows

LONG = "a-rather-long-folder-name-for-a-data-set-of-photos"


def _deep(tmp_path: Path) -> Path:
    return tmp_path / LONG / (LONG + "-again") / "and-one-more-level"


def test_headline_and_table_paths_are_not_wrapped_when_not_a_terminal(tmp_path):
    root = _deep(tmp_path) / "registry"
    r = cli("models", "list", "--registry", root)
    assert r.exit_code == 0, r.output
    assert len(f"models in {root}") > 120
    assert f"models in {root}" in r.stdout.splitlines()        # the title, on one line
    # a table of paths (scan's problem files): each path whole in one row
    data = make_tree(_deep(tmp_path) / "data", {"cats": 3, "dogs": 3}, mode="RGB", size=(8, 8), seed=1)
    bad = data / "cats" / ("not-really-an-image-with-a-long-name-" * 2 + ".png")
    bad.write_bytes(b"nope")
    r = cli("scan", data)
    assert str(bad) in [row[0] for row in table_rows(r.stdout)], r.stdout
    assert all(len(row) == 2 and row[1] for row in table_rows(r.stdout) if row[0].startswith(str(data))), r.stdout


def test_log_lines_are_not_wrapped_either(tmp_path):
    data = make_tree(_deep(tmp_path) / "data", {"cats": 3, "dogs": 3}, mode="RGB", size=(8, 8), seed=1)
    dest = _deep(tmp_path) / "split"
    r = cli("split", data, dest, "--val", 0.34, "--test", 0.34)
    assert r.exit_code == 0, r.output
    assert f"manifest: {dest / 'split_manifest.csv'}" in r.stderr.splitlines(), r.stderr


def test_empty_registry_says_where_it_looked_and_how_to_look_elsewhere(tmp_path):
    root = tmp_path / "empty"
    for fmt in ("table", "json"):
        r = cli("models", "list", "--registry", root, "--format", fmt)
        assert r.exit_code == 0, r.output
        assert f"no models in {root}" in r.stderr and "--registry DIR" in r.stderr and "IMGCLF_HOME" in r.stderr
    assert json.loads(r.stdout)["models"] == [] and json.loads(r.stdout)["registry"] == str(root)
    for args in (["predict", "x.png", "--registry", root], ["models", "show", "--registry", root],
                 ["export", "--registry", root]):
        line = error_line(cli(*args))
        assert str(root) in line and "--registry DIR" in line and "IMGCLF_HOME" in line, line
    line = error_line(cli("models", "show", "flowers", "--registry", root))
    assert "unknown model 'flowers'" in line and str(root) in line and "IMGCLF_HOME" in line, line


def test_a_registry_with_models_lists_them_without_the_hint(registry_copy):
    r = cli("models", "list", "--registry", registry_copy)
    assert r.exit_code == 0 and "no models" not in r.stderr, r.output
    line = error_line(cli("models", "show", "flowers", "--registry", registry_copy))
    assert "known: colours" in line and "IMGCLF_HOME" not in line, line


def test_evaluate_warns_on_the_models_own_training_images(trained, registry_copy, tmp_path):
    # the session model was trained on the class-folder tree trained.data (validation held out of it)
    r = cli("evaluate", "colours", trained.data, "--registry", registry_copy, "--out", tmp_path / "ev1",
            "--no-html")
    assert r.exit_code == 0, r.output
    warning = [l for l in r.stderr.splitlines() if l.startswith("warning:") and "trained on" in l]
    assert len(warning) == 1, r.stderr
    assert f"36 of the 36 images are in {trained.data}" in warning[0] and "test/" in warning[0], warning
    # a copy of the same folder elsewhere: found by the recorded fingerprint (names and sizes)
    copy = tmp_path / "copy" / "colours"
    shutil.copytree(trained.data, copy)
    r = cli("evaluate", "colours", copy, "--registry", registry_copy, "--out", tmp_path / "ev2", "--no-html")
    assert r.exit_code == 0 and "dataset fingerprint" in r.stderr, r.stderr
    # other images of the same classes: no warning
    fresh = make_tree(tmp_path / "fresh", {"blue": 4, "green": 4, "red": 4}, mode="RGB", size=(20, 20), seed=9)
    r = cli("evaluate", "colours", fresh, "--registry", registry_copy, "--out", tmp_path / "ev3", "--no-html")
    assert r.exit_code == 0, r.output
    assert "trained on" not in r.stderr and "fingerprint" not in r.stderr, r.stderr
