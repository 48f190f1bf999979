"""Folds and sweeps through a live single-node Slurm cluster (Debian's slurm-wlm and munge, which .ci/run installs):
the fixture starts munged, slurmctld and slurmd on loopback with their files in a temporary folder, and stops them
by PID. Outside CI, without Slurm's commands, the tests skip and say why."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline import slurm
from tests.conftest import GIT_IDENTITY, make_repo, run, set_params

pytestmark = pytest.mark.slow
DVC = [sys.executable, "-m", "dvc"]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(folder: Path, host: str) -> str:
    # Four job slots on this 2-core machine (config_overrides: slurmd takes CPUs from here, not the hardware): a task
    # is mostly process start-up and DVC's bookkeeping, and the sweep's six fold tasks would otherwise queue two at a
    # time.
    return f"""ClusterName=pipelinetests
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/socket/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
NodeName={host} NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=tests Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def cluster():
    """A live Slurm of one node (this machine, 4 slots), its own munge key and socket; SLURM_CONF points at it."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} not found): .ci/run installs Debian's slurm-wlm and munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld, slurmd and munged needs root (CI runs as root)")
    # Not under pytest's temporary folders: munged runs as user munge, which may not enter them (mode 700).
    folder = Path(tempfile.mkdtemp(prefix="pipeline-slurm-"))
    folder.chmod(0o755)
    for sub, mode in (("munge", 0o711), ("socket", 0o755), ("state", 0o700), ("spool", 0o700)):
        (folder / sub).mkdir()
        (folder / sub).chmod(mode)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    shutil.chown(folder / "munge", "munge", "munge")
    shutil.chown(key, "munge", "munge")
    shutil.chown(folder / "socket", "munge", "munge")
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, socket.gethostname().split(".")[0]))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={folder}/socket/munge.socket",
                    f"--key-file={key}", f"--pid-file={folder}/munge/munged.pid",
                    f"--log-file={folder}/munge/munged.log", f"--seed-file={folder}/munge/seed"], check=True)
    subprocess.run(["slurmctld"], check=True)
    subprocess.run(["slurmd"], check=True)
    try:
        deadline = time.time() + 30
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout:
            assert time.time() < deadline, (folder / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.2)
        yield folder
    finally:
        subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True)
        for pid_file in (folder / "slurmd.pid", folder / "slurmctld.pid", folder / "munge" / "munged.pid"):
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except ProcessLookupError:
                    pass
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture
def sent_from(tmp_path) -> Path:
    """The tiny stand-in with two folds, committed and pushed to a bare git remote, with a local-folder DVC remote."""
    repo = make_repo(tmp_path / "repo")
    set_params(repo, folds={"n_splits": 2}, finetune={"folds": [0, 1]})
    run(DVC + ["remote", "add", "-d", "storage", str(tmp_path / "dvc-remote")], repo)
    run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], repo)
    run(["git", "remote", "add", "origin", str(tmp_path / "remote.git")], repo)
    run(["git", "commit", "-qam", "two folds, a DVC remote"], repo)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo)
    return repo


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
    assert len(errors) == 1 and "sweep: 3 task(s) did not finish" in errors[0], sent.stderr
    assert "sweep fold-4 (job" in sent.stderr and "failed at params" in sent.stderr  # dropout=1.0
    assert "sweep experiment-sweep-dropout-1.0" in sent.stderr and "never started: fold-4 did not finish" in sent.stderr
    assert sum("Running stage 'frames'" in text for text in logs.values()) == 1  # once, by prepare
    assert sum("Running stage 'features@tf_efficientnet_lite0'" in text for text in logs.values()) == 1
    assert sum("Running stage 'finetune@lite0-0'" in text for text in logs.values()) == 2  # once per good experiment
    for name in ("experiment-sweep-dropout-0.2.log", "experiment-sweep-dropout-0.5.log"):
        assert "Running stage 'finetune@" not in logs[name]  # its folds came back from the run-cache
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    runs = {e["name"]: e["revs"][0]["data"] for c in table for e in (c.get("experiments") or [])}
    assert set(runs) == {"sweep-dropout-0.2", "sweep-dropout-0.5"}
    for name, data in runs.items():
        assert data["params"]["params.yaml"]["data"]["dropout"] == float(name.rsplit("-", 1)[1])
        assert data["metrics"]["metrics/submission/metrics.json"]["data"]["cv_log_loss"] > 0
    assert [e["overrides"] for e in plan.experiments] == [["dropout=0.2"], ["dropout=0.5"], ["dropout=1.0"]]
