"""Nothing from disk runs as code: checkpoints load as plain weights, no pickle, no shell strings.

A source scan (``ast``) over pipeline/ and bench/ keeps the rules for every
future line; one behavioural test plants a malicious checkpoint where the
finetune stage resumes from and checks that its payload never runs.
"""
from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from pipeline.paths import checkpoint_dir, predictions_dir
from tests.conftest import REPO, put_competition, run

SOURCES = sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "bench").glob("*.py")])


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_the_source_loads_no_code_from_disk_and_builds_no_shell_strings(path):
    for call, name in _calls(path):
        where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
        if name == "torch.load":
            weights_only = _keyword(call, "weights_only")
            assert isinstance(weights_only, ast.Constant) and weights_only.value is True, where
        assert name not in {"pickle.load", "pickle.loads", "pd.read_pickle", "yaml.load", "eval", "exec",
                            "os.system", "os.popen", "torch.jit.load"}, where
        if name == "np.load":
            assert _keyword(call, "allow_pickle") is None, where  # numpy's default refuses pickled arrays
        if re.fullmatch(r"subprocess\.\w+", name):
            shell = _keyword(call, "shell")
            assert shell is None or (isinstance(shell, ast.Constant) and shell.value is False), where
            assert call.args and isinstance(call.args[0], (ast.List, ast.Name)), f"{where}: pass an argument list"


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a poisoned checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_poisoned_resume_checkpoint_is_refused_and_its_payload_never_runs(repo_copy, tiny_competition, tmp_path):
    put_competition(repo_copy, tiny_competition)
    run([sys.executable, "-m", "pipeline.stages.folds"], repo_copy)
    model = "finetune-net"
    last = repo_copy / checkpoint_dir("state-farm-distracted-driver-detection", model, 0) / "last.pt"
    last.parent.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save({"config": _Payload(marker)}, last)
    result = run([sys.executable, "-m", "pipeline.stages.finetune", "net", "--fold", "0"], repo_copy, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "last.pt: not a checkpoint that loads as plain weights (UnpicklingError); delete it" in lines[0]
    assert not marker.exists()
    assert not (repo_copy / predictions_dir("state-farm-distracted-driver-detection", model)).exists()
