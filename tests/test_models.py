"""`imgclf models list|show|rm|tag` and the MODEL forms: NAME, NAME:VERSION, NAME:TAG, latest, a path."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import cli, error_line, make_tree


@pytest.fixture(scope="module")
def three_models(tmp_path_factory, trained):
    """colours:1 (the session model), colours:2 and gray:1, trained in that order."""
    registry = tmp_path_factory.mktemp("models") / "reg"
    shutil.copytree(trained.registry, registry)
    gray = make_tree(tmp_path_factory.mktemp("gray") / "gray", {"dark": 6, "bright": 6}, mode="L", seed=9)
    for data, name in ((trained.data, "colours"), (gray, "gray")):
        r = cli("train", data, "--registry", registry, "--arch", "mlp", "--epochs", 1, "--image-size", 16,
                "--patience", 0, "--name", name)
        assert r.exit_code == 0, r.output
    return registry


def show(registry, model):
    r = cli("models", "show", model, "--registry", registry)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_list_json_and_table(three_models):
    r = cli("models", "list", "--registry", three_models, "--format", "json")
    assert r.exit_code == 0
    listing = json.loads(r.stdout)
    assert [(m["name"], m["version"]) for m in listing["models"]] == [("colours", 1), ("colours", 2), ("gray", 1)]
    assert listing["unfinished"] == []
    assert {m["arch"] for m in listing["models"]} == {"mlp"}
    assert [m["classes"] for m in listing["models"]] == [3, 3, 2]
    table = cli("models", "list", "--registry", three_models)
    assert table.exit_code == 0
    for word in ("colours", "gray", "mlp"):
        assert word in table.stdout
    assert ".cache" not in table.stdout                                   # the pixel cache is not a model


def test_list_of_an_empty_or_missing_registry(tmp_path):
    r = cli("models", "list", "--registry", tmp_path / "nothing-here", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["models"] == []


@pytest.mark.parametrize("model, expected", [
    ("colours", ("colours", 2)),          # NAME: its newest version
    ("colours:1", ("colours", 1)),
    ("colours:2", ("colours", 2)),
    ("gray", ("gray", 1)),
    ("latest", ("gray", 1)),              # the newest model of any name
])
def test_model_forms(three_models, model, expected):
    meta = show(three_models, model)
    assert (meta["name"], meta["version"]) == expected
    assert meta["path"].endswith(f"{expected[0]}/{expected[1]}")


def test_model_given_as_a_path(three_models, tmp_path):
    folder = three_models / "colours" / "1"
    assert show(three_models, folder)["version"] == 1
    assert show(three_models, folder / "model.keras")["version"] == 1
    # a copy of a version folder anywhere on disk is a model too
    shutil.copytree(folder, tmp_path / "my model")
    assert show(three_models, tmp_path / "my model")["class_names"] == ["blue", "green", "red"]


def test_a_data_folder_with_the_models_name_does_not_hide_the_model(three_models, trained, monkeypatch):
    # `imgclf train colours` names the model "colours"; then `imgclf evaluate colours colours` is natural
    monkeypatch.chdir(trained.data.parent)
    assert (trained.data.parent / "colours").is_dir()
    meta = show(three_models, "colours")
    assert (meta["name"], meta["version"]) == ("colours", 2)


@pytest.mark.parametrize("model, words", [
    ("nope", ["unknown model", "nope", "colours", "gray"]),   # lists the known names
    ("colours:9", ["no version 9", "1, 2"]),
    ("colours:prod-never-set", ["no version or tag"]),
    ("../colours", ["not found"]),
    ("/no/such/model.keras", ["not found"]),
])
def test_unknown_models_are_clear_errors(three_models, model, words):
    line = error_line(cli("models", "show", model, "--registry", three_models))
    for w in words:
        assert w in line, line


def test_latest_in_an_empty_registry(tmp_path):
    line = error_line(cli("models", "show", "latest", "--registry", tmp_path))
    assert "no models" in line and str(tmp_path) in line


def test_tag_then_resolve_by_tag(tmp_path, three_models):
    registry = tmp_path / "reg"
    shutil.copytree(three_models, registry)
    r = cli("models", "tag", "colours:1", "prod", "--registry", registry)
    assert r.exit_code == 0, r.output
    assert show(registry, "colours:prod")["version"] == 1
    assert json.loads((registry / "colours" / "tags.json").read_text()) == {"prod": 1}
    assert "prod" not in {m["name"] for m in json.loads(cli("models", "list", "--registry", registry,
                                                             "--format", "json").stdout)["models"]}
    for bad in ("7", "latest", "../up"):
        assert "invalid tag" in error_line(cli("models", "tag", "colours:1", bad, "--registry", registry))


def test_rm_needs_yes_without_a_terminal(tmp_path, three_models):
    registry = tmp_path / "reg"
    shutil.copytree(three_models, registry)
    line = error_line(cli("models", "rm", "colours:1", "--registry", registry, input=""))
    assert "--yes" in line
    assert (registry / "colours" / "1" / "model.keras").is_file()

    r = cli("models", "rm", "colours:1", "--yes", "--registry", registry)
    assert r.exit_code == 0, r.output
    assert not (registry / "colours" / "1").exists()
    assert (registry / "colours" / "2" / "model.keras").is_file() and (registry / "gray" / "1").is_dir()
    listing = json.loads(cli("models", "list", "--registry", registry, "--format", "json").stdout)
    assert [(m["name"], m["version"]) for m in listing["models"]] == [("colours", 2), ("gray", 1)]
    assert listing["unfinished"] == []                                   # the removal left no debris
    assert "no version 1" in error_line(cli("models", "show", "colours:1", "--registry", registry))


def test_rm_refuses_a_model_outside_the_registry(tmp_path, three_models):
    outside = tmp_path / "elsewhere"
    shutil.copytree(three_models / "gray" / "1", outside)
    line = error_line(cli("models", "rm", outside, "--yes", "--registry", three_models))
    assert "outside the registry" in line
    assert (outside / "model.keras").is_file()


def test_models_show_prints_the_metadata(three_models):
    meta = show(three_models, "gray")
    assert meta["class_names"] == ["bright", "dark"] and meta["channels"] == 1


def test_a_removed_newest_version_number_is_never_handed_out_again(tmp_path, three_models, trained):
    registry = tmp_path / "reg"
    shutil.copytree(three_models, registry)
    r = cli("models", "rm", "colours:2", "--yes", "--registry", registry)
    assert r.exit_code == 0, r.output
    r = cli("train", trained.data, "--registry", registry, "--arch", "mlp", "--epochs", 1, "--image-size", 16,
            "--patience", 0, "--name", "colours", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == 3                       # not 2 again
    assert "no version 2" in error_line(cli("models", "show", "colours:2", "--registry", registry))
    assert show(registry, "colours")["version"] == 3


def test_rm_drops_the_tags_of_that_version_only(tmp_path, three_models):
    registry = tmp_path / "reg"
    shutil.copytree(three_models, registry)
    for ref, tag in (("colours:2", "prod"), ("colours:2", "candidate"), ("colours:1", "old")):
        assert cli("models", "tag", ref, tag, "--registry", registry).exit_code == 0
    assert cli("models", "rm", "colours:2", "--yes", "--registry", registry).exit_code == 0
    assert json.loads((registry / "colours" / "tags.json").read_text()) == {"old": 1}
    assert show(registry, "colours:old")["version"] == 1
    line = error_line(cli("models", "show", "colours:prod", "--registry", registry))
    assert line == "error: model colours has no version or tag 'prod'"


# Each process: wait for the start signal, then in a loop tag the model and add a field to its metadata
# (as `models tag`, `export` and `evaluate` do), through the registry's own functions.
UPDATER = r"""
import os, sys, time
from imgclf import registry
root, worker, rounds, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
while not os.path.exists(start):
    time.sleep(0.005)
for k in range(rounds):
    registry.set_tag(root, "colours:1", f"w{worker}-{k}")
    registry.update_metadata(registry.resolve(root, "colours:1"), **{f"note_{worker}_{k}": k})
"""


@pytest.mark.timeout(180)
def test_concurrent_tag_and_metadata_updates_lose_nothing(tmp_path, three_models):
    import subprocess
    import sys

    from conftest import child_env

    registry = tmp_path / "reg"
    shutil.copytree(three_models, registry)
    before = json.loads((registry / "colours" / "1" / "metadata.json").read_text())
    workers, rounds = 6, 25
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", UPDATER, str(registry), str(w), str(rounds), str(start)],
                              stderr=subprocess.PIPE, text=True, env=child_env()) for w in range(workers)]
    start.touch()
    for p in procs:
        _, err = p.communicate(timeout=150)
        assert p.returncode == 0, err
    tags = json.loads((registry / "colours" / "tags.json").read_text())
    assert tags == {f"w{w}-{k}": 1 for w in range(workers) for k in range(rounds)}
    meta = json.loads((registry / "colours" / "1" / "metadata.json").read_text())
    assert {k: v for k, v in meta.items() if k.startswith("note_")} == \
        {f"note_{w}_{k}": k for w in range(workers) for k in range(rounds)}
    assert {k: v for k, v in meta.items() if not k.startswith("note_")} == before
