"""The code's shape, checked from its source (no imports run): the import graph goes one way, errors live
in errors.py, long functions say why, and the Keras-dependent classes are made in one style."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Dict, Set

PACKAGE = Path(__file__).resolve().parent.parent / "imgclf"
#: a function longer than this needs a `# long: <reason>` comment in it
MAX_LINES = 80
LONG_REASON = re.compile(r"#\s*long:\s*\S")


def _sources() -> Dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def import_graph() -> Dict[str, Set[str]]:
    """imgclf module -> the imgclf modules it imports anywhere in it (test_cli_layout's reader)."""
    from test_cli_layout import _import_graph

    return _import_graph()


def reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_import_graph_has_predict_below_train():
    graph = import_graph()
    below = reachable(graph, "imgclf.predict")
    assert not below & {"imgclf.train", "imgclf.quantize", "imgclf.distribute", "imgclf.runs", "imgclf.export"}, \
        sorted(below)
    assert "imgclf.train" not in reachable(graph, "imgclf.quantize")
    assert "imgclf.predict" not in reachable(graph, "imgclf.registry")
    # the layers under everything import nothing above them
    for low in ("imgclf.errors", "imgclf.config"):
        assert reachable(graph, low) <= {"imgclf.errors"}, (low, reachable(graph, low))


def test_the_graph_reader_sees_function_level_imports():
    graph = import_graph()
    assert "imgclf.train" in graph["imgclf.cli"]             # inside the train command
    assert "imgclf.data.files" in graph["imgclf.quantize"]   # inside _model_splits


def test_error_classes_live_in_errors_py():
    elsewhere = []
    for name, path in _sources().items():
        if name == "imgclf.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if any(b.endswith("Error") or b in ("Interrupted", "ImgclfError") for b in bases):
                    elsewhere.append(f"{path.name}: {node.name}")
    assert not elsewhere, elsewhere


def long_functions():
    """(file, function, lines, has a `# long: reason` comment) for every function over MAX_LINES."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_LINES:
                    body = lines[node.lineno - 1:node.end_lineno]
                    out.append((str(path.relative_to(PACKAGE)), node.name, length,
                                any(LONG_REASON.search(line) for line in body)))
    return out


def test_no_long_function_without_a_reason():
    unexplained = [f"{f}:{name} ({n} lines)" for f, name, n, why in long_functions()
                   if not why]
    assert not unexplained, (f"functions over {MAX_LINES} lines need a `# long: <reason>` comment, or to be "
                             f"split: {unexplained}")


def test_the_long_function_check_can_fail(tmp_path, monkeypatch):
    pkg = tmp_path / "imgclf"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (pkg / "a.py").write_text(f"def big():\n{body}\n\n\ndef explained():\n    # long: a test\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert [(f, name, why) for f, name, _, why in long_functions()] == [("a.py", "big", False),
                                                                        ("a.py", "explained", True)]


def test_keras_classes_are_made_one_way():
    """A function that defines a class on a Keras base (keras.layers.Layer, keras.callbacks.Callback, ...)
    is decorated with tf_quiet.keras_class: built on first use, once per process."""
    other_style = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef):
                continue
            makes = any(isinstance(c, ast.ClassDef) and any("keras" in ast.unparse(b) for b in c.bases)
                        for c in ast.walk(node) if c is not node)
            decorated = any(ast.unparse(d).endswith("keras_class") for d in node.decorator_list)
            if makes and not decorated:
                other_style.add((str(path.relative_to(PACKAGE)), node.name))
    assert not other_style, sorted(other_style)
