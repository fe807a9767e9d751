"""The packages depend on each other one way: modeling <- data <- eval <- training <- cli.

Checked on the source (every import statement, including those inside functions), so a lazy import
that reaches upwards fails here rather than in a user's environment without the training extras.
"""

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"modeling_finedefics": "modeling_finedefics", "finedefics_data": "data", "finedefics_eval": "eval",
            "finedefics_training": "training", "finedefics_cli": "cli"}
# What each package may import from this repository (besides itself).
ALLOWED = {
    "modeling_finedefics": set(),
    "finedefics_data": {"modeling_finedefics"},
    "finedefics_eval": {"modeling_finedefics", "finedefics_data"},
    "finedefics_training": {"modeling_finedefics", "finedefics_data", "finedefics_eval"},
    "finedefics_cli": {"modeling_finedefics", "finedefics_data", "finedefics_eval", "finedefics_training"},
}
# Module names that were aliases of moved modules, removed (the package had no outside users yet).
REMOVED_ALIASES = ("finedefics_training.cli", "finedefics_training.commands", "finedefics_training.data",
                   "finedefics_training.demo_data", "finedefics_training.demo_report", "finedefics_eval.prompts")


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names & set(PACKAGES)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_run_one_way(package):
    folder = REPO / PACKAGES[package]
    offending = {}
    for path in sorted(folder.rglob("*.py")):
        reached = imported_packages(path) - ALLOWED[package] - {package}
        if reached:
            offending[str(path.relative_to(REPO))] = sorted(reached)
    assert not offending, f"{package} must not import {offending}"


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from finedefics_training.trainer import FinedeficsTrainer\n")
    assert imported_packages(source) == {"finedefics_training"}


@pytest.mark.parametrize("name", REMOVED_ALIASES)
def test_removed_alias_modules_stay_removed(name):
    """One name per module: the old paths are gone, not re-pointed at the moved modules."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)
