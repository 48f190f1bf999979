"""dvc.yaml tells the truth: every stage depends on exactly the pipeline modules its command imports, and the
committed dvc.lock is what the committed code and params give (a change is committed with its `dvc repro`)."""
from __future__ import annotations

import ast
import hashlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from dvc.repo import Repo
from dvc.utils.serialize import load_yaml

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"


def _imported_modules(module: str) -> set[str]:
    """``pipeline.*`` modules one module imports, at the top or inside a function."""
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
        elif isinstance(node, ast.ImportFrom) and node.module in ("pipeline", "pipeline.stages"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            found.add(node.module)
    return found


def imported_files(module: str) -> set[str]:
    """The files of ``module`` and of everything it imports from pipeline/, transitively."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += _imported_modules(current)
    return {current.replace(".", "/") + ".py" for current in seen}


def _generated(folder) -> dict:
    with Repo(str(folder)) as repo:
        return {stage.name: (stage.cmd, {dep.def_path for dep in stage.deps}) for stage in repo.index.stages}


@pytest.fixture(scope="module")
def stages() -> dict:
    """Every stage dvc.yaml generates (foreach and matrix expanded): name -> (command, dependency paths)."""
    return _generated(REPO)


@pytest.fixture(scope="module")
def every_stage(stages, tmp_path_factory) -> dict:
    """The stages, and those that only exist when optional params are on (pseudo-label students)."""
    folder = tmp_path_factory.mktemp("optional")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, folder / name)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=folder, check=True)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["pseudo"]["models"] = list(params["finetune"]["models"])
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    optional = _generated(folder)
    assert any(name.startswith("pseudo@") for name in optional)
    return {**stages, **optional}


def test_the_package_inits_hold_no_code_so_no_stage_needs_them_as_dependencies():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        assert [type(node) for node in tree.body] == [ast.Expr] and isinstance(tree.body[0].value, ast.Constant)


def test_stage_modules_are_what_dvc_runs_and_nothing_imports_them(stages):
    stage_modules = {f"pipeline.stages.{path.stem}" for path in (PACKAGE / "stages").glob("*.py")} - {
        "pipeline.stages.__init__"}
    run_by_dvc = {shlex.split(cmd)[shlex.split(cmd).index("-m") + 1] for cmd, _ in stages.values()}
    assert stage_modules - {"pipeline.stages.pseudo"} == run_by_dvc  # pseudo@ stages exist when pseudo.models is set
    importers = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "bench").glob("*.py")]:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        importers += [f"{path.relative_to(REPO)} imports {imported}" for imported in _imported_modules(module)
                      if imported in stage_modules and imported != module]
    assert importers == []


def test_every_library_the_code_imports_is_a_declared_dependency():
    import tomllib
    from importlib.metadata import packages_distributions

    declared = {re.split(r"[<>=\[ ]", spec)[0].lower().replace("_", "-")
                for spec in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"pipeline"}
    # The optional offline weights of lite2 are an extra ([lite2]), imported by name only when asked for.
    distributions = packages_distributions()
    undeclared = sorted(f"{module} (from {', '.join(distributions.get(module, ['?']))})" for module in third_party
                        if not {d.lower().replace("_", "-") for d in distributions.get(module, [module])} & declared)
    assert undeclared == []


def test_every_stage_depends_on_exactly_the_modules_its_command_imports(every_stage):
    problems = []
    for name, (cmd, deps) in sorted(every_stage.items()):
        words = shlex.split(cmd)
        module = words[words.index("-m") + 1]
        needed = imported_files(module)
        listed = {dep for dep in deps if dep.startswith("pipeline/")}
        problems += [f"{name}: missing dep {path}" for path in sorted(needed - listed)]
        problems += [f"{name}: lists {path}, which its command never imports" for path in sorted(listed - needed)]
    assert problems == []


def test_every_stage_that_reads_the_competition_depends_on_its_description(every_stage):
    # A description is the competition (its files, labels, metric, submission): editing it re-runs what read it.
    description = f"competitions/{load_yaml(REPO / 'params.yaml')['competition']}.yaml"
    missing = [name for name, (_, deps) in sorted(every_stage.items())
               if "pipeline/data/competitions.py" in deps and description not in deps]
    assert missing == []


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _param(params: dict, dotted: str):
    value = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return "(no longer in params.yaml)"
        value = value[part]
    return value


def test_the_committed_lock_records_the_current_code_and_params_of_every_stage(stages):
    # DVC's own YAML reader (YAML 1.2): it writes `1.0e-15` back as `1e-15`, which PyYAML would read as text.
    lock, params = load_yaml(REPO / "dvc.lock")["stages"], load_yaml(REPO / "params.yaml")
    stale = [f"{name}: not in dvc.lock" for name in sorted(set(stages) - set(lock))]
    for name, entry in sorted(lock.items()):
        if name not in stages:
            stale.append(f"{name}: in dvc.lock but no longer in dvc.yaml")
            continue
        for dep in entry.get("deps", []):
            path = REPO / dep["path"]
            if dep["path"].startswith(("pipeline/", "competitions/")) and (not path.is_file() or _md5(path) != dep["md5"]):
                stale.append(f"{name}: {dep['path']} changed")
        for key, value in entry.get("params", {}).get("params.yaml", {}).items():
            if _param(params, key) != value:
                stale.append(f"{name}: param {key} changed")
    assert stale == [], "run `dvc repro` and commit dvc.lock and metrics/ with the change"
