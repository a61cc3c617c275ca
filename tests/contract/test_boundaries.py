"""The architecture as a checked fact: the service depends on the contract, never on the trainer, and the
contract on neither; serving loads none of the training-only libraries (the [serve] install lacks them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level names each module of package imports, by module path."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


@pytest.mark.parametrize("package, forbidden", [("service", {"trainer"}), ("docker", {"trainer"}),
                                                ("contract", {"trainer", "service"})])
def test_no_import_crosses_the_boundary(package, forbidden):
    crossing = {module: sorted(names & forbidden) for module, names in imported_packages(package).items()
                if names & forbidden}
    assert not crossing, f"{package}/ must not import {', '.join(sorted(forbidden))}: {crossing}"


def test_serving_loads_no_training_code_or_libraries():
    check = ("import sys, service.app, service.build_index, service.__main__; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'trainer', 'matplotlib', 'tensorboard', 'benchmarks'})))")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_training_and_evaluation_load_none_of_the_serving_libraries():
    """The GPU machine has torch but not pydantic, fastapi or faiss (docs/benchmarks.md): pretraining must run
    there without them, and trainer.linear_eval import without them. Only the evaluation's files (contract.evaluation)
    and the export's manifest need pydantic, which the GPU run installs from wheels (benchmarks/gpu_prepare.sh)."""
    check = ("import sys, trainer.pretrain, trainer.linear_eval; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'pydantic', 'fastapi', 'faiss', 'service', 'uvicorn'})))")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
