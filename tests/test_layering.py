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


def module_graph() -> dict[str, set[str]]:
    """Each module of the five packages -> the modules of theirs it imports (any import statement, lazy ones
    too). Importing a submodule imports its parent packages first in any case: those edges are left out."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [package, *path.relative_to(REPO / folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: _imported_modules(name, path, modules) for name, path in modules.items()}


def _imported_modules(name: str, path: Path, modules: dict) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return {target for target in found if target in modules and target != name and not name.startswith(target + ".")}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's components)."""
    index, low, stack, cycles = {}, {}, [], []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others():
    assert import_cycles(module_graph()) == []


def test_the_cycle_finder_sees_a_lazy_two_module_cycle():
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
