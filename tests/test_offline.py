"""Nothing calls out unless the user asked for it: no module of ours opens a connection when imported, every one
that imports albumentations does so with its PyPI version check off, and a stage run with no network at all
prints exactly its one line for a bad input (pipeline/offline.py)."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Runs first in a fresh interpreter: records every attempt to reach another host, and whether albumentations'
# version check was off when albumentations was first imported, then imports the module named in argv[1].
WATCH = """
import importlib, ipaddress, os, sys
seen = []
def local(address):
    host = address[0] if isinstance(address, tuple) else address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "")
def hook(event, args):
    if event == "socket.connect" and not (isinstance(args[1], str) or local(args[1])):
        seen.append(f"connect {args[1]}")
    elif event == "socket.getaddrinfo" and not local(args[0]):
        seen.append(f"lookup {args[0]}")
    elif event == "urllib.Request":
        seen.append(f"request {args[0]}")
    elif event == "import" and args[0] == "albumentations":
        seen.append(f"albumentations imported with NO_ALBUMENTATIONS_UPDATE={os.environ.get('NO_ALBUMENTATIONS_UPDATE')!r}")
sys.addaudithook(hook)
for name in sys.argv[1:]:
    if name.endswith(".py"):
        sys.path.insert(0, os.getcwd())
        import runpy
        sys.argv = [name, "--help"]
        try:
            runpy.run_path(name, run_name="__main__")
        except SystemExit:
            pass
    else:
        importlib.import_module(name)
print("\\n".join(seen))
"""


def _imports_albumentations(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "albumentations" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "albumentations":
            return True
    return False


def _module(path: Path) -> str:
    relative = path.relative_to(REPO)
    return str(relative) if relative.parts[0] == "bench" else ".".join(relative.with_suffix("").parts)


# Every file of ours that imports albumentations itself, each in an interpreter of its own (the first import is the
# one that checks); then every stage (what dvc.yaml runs) and every command of ours together, for any other call out.
IMPORTERS = sorted(_module(p) for p in [*REPO.glob("pipeline/**/*.py"), *REPO.glob("bench/*.py")]
                   if _imports_albumentations(p))
COMMANDS = sorted(f"pipeline.{p.relative_to(REPO / 'pipeline').with_suffix('').as_posix().replace('/', '.')}"
                  for p in REPO.glob("pipeline/**/*.py") if p.stem != "__init__")


@pytest.mark.parametrize("modules", [[m] for m in IMPORTERS] + [COMMANDS], ids=[*IMPORTERS, "every-module"])
def test_importing_it_reaches_no_other_host_and_albumentations_never_checks_for_updates(modules):
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}  # as a user's shell has it
    result = subprocess.run([sys.executable, "-c", WATCH, *modules], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    events = result.stdout.split("\n")
    assert not [e for e in events if e.startswith(("connect", "lookup", "request"))], events
    assert not [e for e in events if e.startswith("albumentations") and not e.endswith("'1'")], events
    assert "Error fetching version info" not in result.stderr and "check for updates" not in result.stderr


def test_every_file_that_imports_albumentations_is_found():
    # The parametrisation above is only as good as the search that feeds it.
    assert {"pipeline.views.augment", "pipeline.views.image_data"} <= set(IMPORTERS)


def _network_free(command: list[str]) -> list[str]:
    """``command`` in a network namespace of its own with only loopback, as .ci/run runs the suite."""
    return [str(REPO / ".ci" / "offline"), *command]


def _can_unshare() -> bool:
    return (shutil.which("unshare") is not None and shutil.which("ip") is not None and
            subprocess.run(_network_free(["true"]), capture_output=True).returncode == 0)


@pytest.mark.skipif(not _can_unshare(), reason="needs root, unshare and ip (a network namespace of its own)")
def test_a_stage_with_no_network_prints_exactly_its_one_line_for_a_bad_input(repo_copy, tmp_path):
    # The features stage imports albumentations: with its version check on, offline, two warning lines came first.
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(repo_copy),
            "PIPELINE_RUNS_DIR": str(tmp_path / "runs")}  # alone: no line about sharing the cores with other stages
    result = subprocess.run(_network_free([sys.executable, "-m", "pipeline.stages.features", "resnet18"]),
                            cwd=repo_copy, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: params.yaml: features.backbones: 'resnet18' is not listed"), line
