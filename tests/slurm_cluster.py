"""A live single-node Slurm on this machine, for tests/test_slurm.py and bench/slurm_sweep.py: munged, slurmctld and
slurmd on loopback (Debian's slurm-wlm and munge, which .ci/run installs), with their own munge key, socket, ports and
state folder, stopped by PID at the end. Needs root (the daemons); ``SLURM_CONF`` points at it meanwhile."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from tests.conftest import make_repo, run, set_params

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


def missing() -> str:
    """Why no cluster can start here ("" when one can)."""
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return f"no Slurm here ({', '.join(absent)} not found): .ci/run installs Debian's slurm-wlm and munge"
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root (CI runs as root)"
    return ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(folder: Path, host: str, slots: int) -> str:
    # config_overrides: slurmd takes CPUs from here, not from the hardware (more job slots than cores: a task of the
    # tiny stand-in is mostly process start-up and DVC's bookkeeping).
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
NodeName={host} NodeAddr=127.0.0.1 CPUs={slots} State=UNKNOWN
PartitionName=tests Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def single_node_slurm(slots: int = 4) -> Iterator[Path]:
    """The running cluster's folder (its slurm.conf, logs and state)."""
    # Not under pytest's temporary folders: munged runs as user munge, which may not enter them (mode 700).
    folder = Path(tempfile.mkdtemp(prefix="pipeline-slurm-"))
    folder.chmod(0o755)
    for sub, mode in (("munge", 0o711), ("socket", 0o755), ("state", 0o700), ("spool", 0o700)):
        (folder / sub).mkdir()
        (folder / sub).chmod(mode)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    for path in (folder / "munge", key, folder / "socket"):
        shutil.chown(path, "munge", "munge")
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, socket.gethostname().split(".")[0], slots))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={folder}/socket/munge.socket",
                        f"--key-file={key}", f"--pid-file={folder}/munge/munged.pid",
                        f"--log-file={folder}/munge/munged.log", f"--seed-file={folder}/munge/seed"], check=True)
        subprocess.run(["slurmctld"], check=True)
        subprocess.run(["slurmd"], check=True)
        deadline = time.time() + 30
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout:
            if time.time() > deadline:
                raise RuntimeError((folder / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.2)
        yield folder
    finally:
        subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True)
        for pid_file in (folder / "slurmd.pid", folder / "slurmctld.pid", folder / "munge" / "munged.pid"):
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def sweep_repo(folder: Path) -> Path:
    """The tiny stand-in with two folds, committed and pushed to a bare git remote, with a local-folder DVC remote:
    what a sweep is sent from."""
    dvc = [sys.executable, "-m", "dvc"]
    repo = make_repo(folder / "repo")
    set_params(repo, folds={"n_splits": 2}, finetune={"folds": [0, 1]})
    run(dvc + ["remote", "add", "-d", "storage", str(folder / "dvc-remote")], repo)
    run(["git", "init", "-q", "--bare", str(folder / "remote.git")], repo)
    run(["git", "remote", "add", "origin", str(folder / "remote.git")], repo)
    run(["git", "commit", "-qam", "two folds, a DVC remote"], repo)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo)
    return repo
