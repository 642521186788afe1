"""`imgclf compare` (two models image by image, McNemar's exact test) and the promotion gate of
`imgclf models tag --gate`."""
from __future__ import annotations

import csv
import math
import json
import shutil

import pytest
from PIL import Image

from imgclf import compare as K

from conftest import cli, derived_model, error_line


def _swap_ab(kernel, bias):
    """Classes a and b swapped in the output layer: most a and b images turn wrong."""
    k, b = kernel.copy(), bias.copy()
    k[:, [0, 1]], b[[0, 1]] = kernel[:, [1, 0]], bias[[1, 0]]
    return k, b


@pytest.fixture(scope="module")
def pair(tmp_path_factory, hard_trained):
    """hard:1 (the trained model) and hard:2, a worse one (classes a and b swapped)."""
    reg = tmp_path_factory.mktemp("registry-pair")
    shutil.copytree(hard_trained.registry, reg, dirs_exist_ok=True)
    derived_model(hard_trained, reg, 2, _swap_ab)
    return reg


@pytest.fixture
def pair_copy(tmp_path, pair):
    dest = tmp_path / "registry"
    shutil.copytree(pair, dest)
    return dest


def test_mcnemar_exact_matches_the_binomial_sum(monkeypatch):
    assert K.mcnemar_exact(0, 0) == 1.0
    assert K.mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert K.mcnemar_exact(5, 5) == 1.0
    with_scipy = [K.mcnemar_exact(b, c) for b, c in ((3, 9), (12, 4), (1, 30), (40, 42))]
    import builtins
    real_import = builtins.__import__

    def no_scipy(name, *a, **kw):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert [K.mcnemar_exact(b, c) for b, c in ((3, 9), (12, 4), (1, 30), (40, 42))] == pytest.approx(with_scipy)
    assert K.mcnemar_exact(3, 9) == pytest.approx(2 * sum(math.comb(12, i) for i in range(4)) / 2 ** 12)


def test_compare_counts_are_symmetric_when_a_and_b_swap(pair, hard_data, tmp_path):
    reports = {}
    for a, b in ((1, 2), (2, 1)):
        r = cli("compare", f"hard:{a}", f"hard:{b}", hard_data, "--registry", pair, "--format", "json",
                "--out", tmp_path / f"{a}{b}")
        assert r.exit_code == 0, r.output
        reports[a, b] = json.loads(r.stdout)
    ab, ba = reports[1, 2], reports[2, 1]
    assert ab["images"] == ba["images"] == 120
    assert (ab["only_a_right"], ab["only_b_right"]) == (ba["only_b_right"], ba["only_a_right"])
    assert (ab["both_right"], ab["both_wrong"]) == (ba["both_right"], ba["both_wrong"])
    assert ab["both_right"] + ab["both_wrong"] + ab["only_a_right"] + ab["only_b_right"] == 120
    assert (ab["accuracy_a"], ab["accuracy_b"]) == (ba["accuracy_b"], ba["accuracy_a"])
    assert ab["mcnemar_p"] == ba["mcnemar_p"] < 0.01
    assert ab["accuracy_a"] > ab["accuracy_b"] and ab["only_a_right"] > ab["only_b_right"]
    for x, y in zip(ab["per_class"], ba["per_class"]):
        assert x["class"] == y["class"] and x["delta"] == pytest.approx(-y["delta"])
        assert (x["recall_a"], x["recall_b"]) == (y["recall_b"], y["recall_a"])
    # class c is untouched by the swap
    assert [r["delta"] for r in ab["per_class"] if r["class"] == "c"] == [0.0]
    flip = {"path", "true"}
    assert sorted((d["path"], d["pred_a"], d["pred_b"]) for d in ab["disagreements"]) == \
        sorted((d["path"], d["pred_b"], d["pred_a"]) for d in ba["disagreements"])
    assert all(set(d) == flip | {"pred_a", "pred_b", "conf_a", "conf_b"} for d in ab["disagreements"])


def test_compare_writes_its_files_and_refuses_to_overwrite(pair, hard_data, tmp_path):
    r = cli("compare", "hard:1", "hard:2", hard_data, "--registry", pair, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "A = hard:1, B = hard:2" in r.stdout and "McNemar exact test" in r.stdout
    report = json.loads((tmp_path / "compare.json").read_text())
    with open(tmp_path / "disagreements.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["only_a_right"] + report["only_b_right"] == len(report["disagreements"])
    for row in rows:
        assert (row["pred_a"] == row["true"]) != (row["pred_b"] == row["true"])
        assert row["path"].split("/")[-2] == row["true"]
    # the ones B breaks come first
    first_b_right = next(i for i, r_ in enumerate(rows) if r_["pred_b"] == r_["true"])
    assert all(r_["pred_a"] == r_["true"] for r_ in rows[:first_b_right])
    with Image.open(tmp_path / "disagreements.png") as im:
        assert im.format == "PNG" and im.size[0] > 600
    before = (tmp_path / "compare.json").read_bytes()
    r = cli("compare", "hard:1", "hard:2", hard_data, "--registry", pair, "--out", tmp_path)
    assert r.exit_code == 2
    assert error_line(r) == (f"error: {tmp_path}: would overwrite compare.json, disagreements.csv, "
                             "disagreements.png (use --force)")
    assert (tmp_path / "compare.json").read_bytes() == before

    # default: in B's registry folder
    r = cli("compare", "hard:2", "hard:1", hard_data, "--registry", pair, "--format", "json")
    assert r.exit_code == 0, r.output
    assert (pair / "hard" / "1" / "compare" / "hard-2" / "compare.json").is_file()


def test_compare_refuses_models_with_other_classes(pair, trained, hard_data, tmp_path):
    r = cli("compare", "hard:1", trained.path, hard_data, "--registry", pair, "--out", tmp_path)
    assert r.exit_code == 2
    assert "have different classes (a, b, c vs blue, green, red)" in error_line(r)


def _tags(reg):
    p = reg / "hard" / "tags.json"
    return p.read_bytes() if p.exists() else None


def test_gate_refuses_a_worse_model_and_leaves_the_tag(pair_copy, hard_data):
    reg = pair_copy
    r = cli("models", "tag", "hard:1", "prod", "--gate", hard_data, "--registry", reg)
    assert r.exit_code == 0, r.output
    assert "not held yet; the gate passes" in r.stderr
    before = _tags(reg)
    assert json.loads(before) == {"prod": 1}

    r = cli("models", "tag", "hard:2", "prod", "--gate", hard_data, "--registry", reg)
    assert r.exit_code == 1
    line = error_line(r)
    assert line.startswith("error: hard:2 not tagged prod (held by hard:1): accuracy ")
    report = reg / "hard" / "2" / "compare" / "hard-1" / "compare.json"
    assert line.endswith(f"; report: {report}") and report.is_file()
    assert _tags(reg) == before
    r = cli("predict", sorted((hard_data / "test" / "a").iterdir())[0], "--model", "hard:prod", "--registry", reg,
            "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["path"]
    assert json.loads(cli("models", "show", "hard:prod", "--registry", reg).stdout)["version"] == 1

    # a tolerance larger than the drop lets it through, unless the regressions are limited
    drop = json.loads(report.read_text())
    tolerance = round(drop["accuracy_a"] - drop["accuracy_b"] + 0.01, 4)
    r = cli("models", "tag", "hard:2", "prod", "--gate", hard_data, "--registry", reg, "--min-accuracy-delta",
            tolerance, "--max-regressions", drop["only_a_right"] - 1)
    assert r.exit_code == 1
    assert f"it breaks {drop['only_a_right']} images that hard:1 gets right (at most " \
           f"{drop['only_a_right'] - 1} allowed)" in error_line(r)
    assert _tags(reg) == before
    r = cli("models", "tag", "hard:2", "prod", "--gate", hard_data, "--registry", reg, "--min-accuracy-delta",
            tolerance)
    assert r.exit_code == 0, r.output
    assert json.loads(_tags(reg)) == {"prod": 2}


def test_gate_accepts_a_better_model(pair_copy, hard_data):
    reg = pair_copy
    assert cli("models", "tag", "hard:2", "prod", "--registry", reg).exit_code == 0     # the worse one in prod
    r = cli("models", "tag", "hard:1", "prod", "--gate", hard_data, "--registry", reg)
    assert r.exit_code == 0, r.output
    assert "gate passed on 120 images" in r.stderr and "hard:prod -> version 1" in r.stderr
    assert json.loads(_tags(reg)) == {"prod": 1}
    report = json.loads((reg / "hard" / "1" / "compare" / "hard-2" / "compare.json").read_text())
    assert report["model_a"] == "hard:2" and report["model_b"] == "hard:1"
    assert report["accuracy_b"] > report["accuracy_a"]


def test_gate_options_are_checked(pair_copy, hard_data):
    r = cli("models", "tag", "hard:1", "prod", "--max-regressions", 2, "--registry", pair_copy)
    assert r.exit_code == 2
    assert error_line(r) == "error: --max-regressions and --min-accuracy-delta apply with --gate DATA only"
    r = cli("models", "tag", "hard:1", "prod", "--gate", hard_data, "--max-regressions", -1, "--registry", pair_copy)
    assert r.exit_code == 2
    assert error_line(r) == "error: --max-regressions must be 0 or more, got -1"
    r = cli("models", "tag", "hard:1", "3", "--gate", hard_data, "--registry", pair_copy)
    assert r.exit_code == 2 and "a tag cannot be a number" in error_line(r)
    assert _tags(pair_copy) is None


def test_the_tag_is_not_moved_when_it_moved_during_the_gate(pair_copy, monkeypatch):
    from imgclf import registry
    from imgclf.errors import ImgclfError

    registry.set_tag(pair_copy, "hard:1", "prod")
    with pytest.raises(ImgclfError, match="moved to version 1 meanwhile"):
        registry.set_tag(pair_copy, "hard:2", "prod", expect_version=None)
    assert json.loads(_tags(pair_copy)) == {"prod": 1}
