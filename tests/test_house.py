"""The house in wings: pipeline/ is a few packages by concern, and every import runs from the stages and commands
down through the wings to the shared basics, never upward (pipeline/__init__.py draws the house)."""
from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
BASICS = {"config", "errors", "paths", "atomic", "progress", "offline"}  # what every wing uses
COMMANDS = {"submit", "kernel", "leaderboard", "slurm", "preset", "plan"}  # `python -m pipeline.<command>`: README's commands
# Lowest first: a module may import its own wing, any wing below it and the basics.
WINGS = ["data", "compute", "views", "training", "ensemble", "kaggle"]


def level(module: str) -> int:
    """0 for the basics, 1.. for the wings in WINGS order, above them the commands and the stages."""
    parts = module.split(".")[1:]
    if parts[0] in BASICS:
        return 0
    if parts[0] in WINGS:
        return 1 + WINGS.index(parts[0])
    return 1 + len(WINGS)  # a command or a stage: nothing imports them


def imports(path) -> set[str]:
    """The ``pipeline.*`` modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
        elif isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {f"pipeline.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            wing = node.module.split(".")
            # `from pipeline.data import tables` names a module; `from pipeline.data.tables import X` names one too
            found |= ({f"{node.module}.{alias.name}" for alias in node.names} if len(wing) == 2 and wing[1] in WINGS
                      else {node.module})
    return found


def modules() -> dict[str, object]:
    return {".".join(path.relative_to(REPO).with_suffix("").parts): path for path in PACKAGE.rglob("*.py")
            if path.name != "__init__.py"}


def test_the_root_holds_the_shared_basics_and_the_users_commands_and_nothing_else():
    at_root = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert at_root == BASICS | COMMANDS
    assert folders == set(WINGS) | {"stages"}
    for folder in folders:  # each wing opens with what it holds and what it may import
        docstring = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())) or ""
        assert len(docstring) > 80 and ("Imports:" in docstring or folder == "stages"), folder


def test_no_import_runs_upward():
    upward = []
    for module, path in sorted(modules().items()):
        for imported in sorted(imports(path)):
            if imported.split(".")[1] in COMMANDS or imported.startswith("pipeline.stages."):
                upward.append(f"{module} imports {imported}: commands and stages are on top, nothing imports them")
            elif level(imported) > level(module):
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    # The reader above, on a module that imports its way up (a wing importing a wing above it, a basic importing a
    # wing): both found, so an empty list above means something.
    wing = tmp_path / "augment.py"
    wing.write_text("from pipeline.training.backbones import create_backbone\n"
                    "def f():\n    from pipeline.data import tables\n")
    assert imports(wing) == {"pipeline.training.backbones", "pipeline.data.tables"}
    assert level("pipeline.training.backbones") > level("pipeline.views.augment")
    assert level("pipeline.data.competitions") > level("pipeline.config")
