"""Folds and sweeps through a live single-node Slurm cluster (tests/slurm_cluster.py: Debian's slurm-wlm and munge,
which .ci/run installs, started on loopback and stopped by PID). Outside CI, without Slurm's commands, the tests skip
and say why."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.compute import slurm
from tests.conftest import run
from tests.slurm_cluster import missing, single_node_slurm, sweep_repo

pytestmark = pytest.mark.slow
DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def cluster():
    """A live Slurm of one node (this machine, 4 job slots); SLURM_CONF points at it."""
    if missing():
        pytest.skip(missing())
    with single_node_slurm(slots=4) as folder:
        yield folder


@pytest.fixture
def sent_from(tmp_path) -> Path:
    return sweep_repo(tmp_path)


def test_a_sweep_runs_as_slurm_jobs_each_fold_a_task_and_comes_home(cluster, sent_from):
    """Two experiments x two folds, and a third whose params are refused: the frame cache and features computed
    once by `prepare` and shared through the DVC remote; both good experiments back with their CV; the refused one's
    folds named as failed, and its experiment job, which Slurm would keep pending for good, named as never started."""
    repo = sent_from
    sent = run([sys.executable, "-m", "pipeline.slurm", "send", "-S", "dropout=0.2,0.5,1.0", "--folds", "--wait",
                "--poll", "1", "--cpus-per-task", "1", "--name", "sweep"], repo, check=False)
    assert (repo / ".slurm" / "sweep" / "plan.json").is_file(), sent.stderr
    plan = slurm.Plan.load(repo / ".slurm" / "sweep")
    logs = {path.name: path.read_text() for path in (repo / ".slurm" / "sweep" / "logs").glob("*.log")}
    assert sent.returncode == 2, sent.stderr + "".join(logs.values())[-3000:]
    errors = [line for line in sent.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sweep: 3 task(s) did not finish" in errors[0], sent.stderr + "".join(
        text[-2000:] for name, text in logs.items() if name.startswith("experiment-"))
    assert "sweep fold-4 (job" in sent.stderr and "failed at params" in sent.stderr  # dropout=1.0
    assert "sweep experiment-sweep-dropout-1.0" in sent.stderr and "never started: fold-4 did not finish" in sent.stderr
    assert sum("Running stage 'frames'" in text for text in logs.values()) == 1  # once, by prepare
    assert sum("Running stage 'features@tf_efficientnet_lite0'" in text for text in logs.values()) == 1
    assert sum("Running stage 'finetune@net-0'" in text for text in logs.values()) == 2  # once per good experiment
    for name in ("experiment-sweep-dropout-0.2.log", "experiment-sweep-dropout-0.5.log"):
        assert "Running stage 'finetune@" not in logs[name]  # its folds came back from the run-cache
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    runs = {e["name"]: e["revs"][0]["data"] for c in table for e in (c.get("experiments") or [])}
    assert set(runs) == {"sweep-dropout-0.2", "sweep-dropout-0.5"}
    for name, data in runs.items():
        assert data["params"]["params.yaml"]["data"]["dropout"] == float(name.rsplit("-", 1)[1])
        assert data["metrics"]["metrics/submission/metrics.json"]["data"]["cv_log_loss"] > 0
    assert [e["overrides"] for e in plan.experiments] == [["dropout=0.2"], ["dropout=0.5"], ["dropout=1.0"]]


def test_a_failed_dvc_step_reads_as_dvc_s_own_reason(tmp_path):
    """A task whose DVC command failed is reported with DVC's last ``ERROR:`` line from the task's log."""
    log_file = tmp_path / "experiment-x.log"
    log_file.write_text("Running stage 'folds':\nERROR: first\nsome traceback\n"
                        "ERROR: failed to pull data from the cloud - Checkout failed for following targets:\n")
    assert slurm.dvc_error(log_file) == "failed to pull data from the cloud - Checkout failed for following targets:"
    assert slurm.dvc_error(tmp_path / "none.log") == ""


def test_the_remote_is_read_whole_however_long_its_path(tmp_path):
    """`dvc remote list` wraps a long path over two lines; the tasks must get the whole URL, relative ones made
    absolute, so that every task pushes to and pulls from the same place."""
    repo = tmp_path / "r"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(DVC + ["init", "-q"], repo)
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / "dvc-remote"
    run(DVC + ["remote", "add", "-d", "storage", str(deep)], repo)
    run(DVC + ["remote", "add", "other", "../elsewhere"], repo)
    assert slurm.dvc_remote_url("", repo) == str(deep)
    assert slurm.dvc_remote_url("other", repo) == str((tmp_path / "elsewhere").resolve())
    assert slurm.dvc_remote_url("s3://bucket/cache", repo) == "s3://bucket/cache"
