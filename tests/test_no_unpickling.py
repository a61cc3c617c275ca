"""Nothing the project loads from disk is unpickled: every torch.load passes weights_only=True, every np.load
allow_pickle=False, and pickle's loaders are not called at all. Checked on the source, so a new loader cannot
slip in unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("trainer", "service", "docker", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
# Call name -> the keyword that must be passed, with its value; None: never allowed.
RULES = {"torch.load": ("weights_only", True), "np.load": ("allow_pickle", False),
         "numpy.load": ("allow_pickle", False), "pickle.load": None, "pickle.loads": None,
         "torch.serialization.load": None}


def violations(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name not in RULES:
            continue
        rule = RULES[name]
        keywords = {k.arg: k.value for k in node.keywords}
        if rule is None or not (rule[0] in keywords and isinstance(keywords[rule[0]], ast.Constant)
                                and keywords[rule[0]].value is rule[1]):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_checker_catches_unsafe_loads():
    unsafe = "torch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f)\npickle.loads(b)\n"
    safe = "torch.load(f, map_location='cpu', weights_only=True)\nnp.load(f, mmap_mode='r', allow_pickle=False)\n"
    assert len(violations(ast.parse(unsafe))) == 4
    assert violations(ast.parse(safe)) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_loader_unpickles(path):
    assert violations(ast.parse(path.read_text(), str(path))) == []
