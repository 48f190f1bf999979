"""A stage killed midway leaves no output, and the next run redoes it cleanly, leftovers swept."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.atomic import atomic_dir, atomic_file
from pipeline.data.competitions import STATE_FARM
from pipeline.paths import features_dir
from pipeline.training.feature_cache import load_feature_set
from tests.conftest import GIT_IDENTITY, put_competition, set_params

pytestmark = pytest.mark.slow  # end to end: stages as subprocesses

BACKBONE = "tf_efficientnet_lite0"


def test_leftovers_of_a_killed_writer_are_swept_by_the_next_one(tmp_path):
    (tmp_path / ".out.tmp-99999").mkdir()
    (tmp_path / ".out.tmp-99999" / "half.npy").write_bytes(b"half")
    (tmp_path / ".table.csv.tmp-99998").write_text("half")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "whole.npy").write_bytes(b"whole")
    with atomic_file(tmp_path / "table.csv") as tmp:
        tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "table.csv"]


@pytest.mark.parametrize("signal_", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_features_stage_leaves_no_output_and_reruns_cleanly(repo_copy, tiny_competition, signal_, run_stage):
    put_competition(repo_copy, tiny_competition)
    # Enough work that the stage is surely still writing when it is killed.
    set_params(repo_copy, features={"test_views": ["full", "zoom", "left", "right"], "train_passes": 2})
    target = repo_copy / features_dir(STATE_FARM.slug, BACKBONE)
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "PYTHONPATH": str(repo_copy), **GIT_IDENTITY}
    command = [sys.executable, "-m", "pipeline.stages.features", BACKBONE]
    process = subprocess.Popen(command, cwd=repo_copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(target.parent.glob(f".{BACKBONE}.tmp-*")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # inside the extraction, arrays half filled
    process.send_signal(signal_)
    assert process.wait() != 0, "the stage finished before it could be interrupted"
    assert not target.exists()

    # The rerun, in this process, with one view and one pass: what is checked is that the leftovers of the killed
    # run do not stop it or end up in its output, not the amount of work.
    set_params(repo_copy, features={"test_views": ["full"], "train_passes": 1})
    assert run_stage(repo_copy, "features", BACKBONE)[0] == 0
    features = load_feature_set(target)
    assert np.abs(np.asarray(features.train_aug, np.float32)).sum(-1).min() > 0
    assert sorted(p.name for p in target.parent.iterdir()) == [BACKBONE]
