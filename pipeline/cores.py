"""Each running stage its share of the CPU cores, so that runs at once on one machine (`dvc queue start -j 2`, or
two terminals) use every core once instead of each using all of them.

torch sizes its intra-op pool to every core, and OpenMP's threads spin while they wait: two runs of two threads
each on two cores ran fine-tuning 2.3x slower than the same runs one after the other (docs/results.md). So every
stage process (pipeline/errors.py's ``cli``) registers itself in a folder each run on this machine sees
(``$PIPELINE_RUNS_DIR``, default ``<tmp>/kaggle-image-pipeline-<uid>``) and takes ``cores // stages running``
threads for torch (the frames stage: decoding processes); fine-tuning looks again every epoch, so a run that
started alone gives cores back when another starts, and takes them again when it ends. An explicit
``OMP_NUM_THREADS`` wins (the tests set 1). On a CUDA machine torch's own threads are left to the data loader
(pipeline/image_data.py).

CPU training's last digits depend on the thread count (features do not): a run that shared the machine may
differ in them from one that ran alone, as a run on a machine with another core count does.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def runs_dir() -> Path:
    return Path(os.environ.get("PIPELINE_RUNS_DIR") or Path(tempfile.gettempdir()) /
                f"kaggle-image-pipeline-{os.getuid()}")


def machine_cores() -> int:
    return len(os.sched_getaffinity(0))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def running_stages() -> int:
    """Stage processes registered on this machine and still alive (this one included); stale entries removed."""
    alive = 0
    for entry in runs_dir().glob("*"):
        if entry.name.isdigit() and _alive(int(entry.name)):
            alive += 1
        else:
            entry.unlink(missing_ok=True)
    return max(alive, 1)


def share() -> int:
    """This process's share of the cores now: ``OMP_NUM_THREADS`` when set, else cores // stages running."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(int(os.environ["OMP_NUM_THREADS"]), 1)
    return max(machine_cores() // running_stages(), 1)


def keep_share() -> int:
    """Size torch's threads to this process's share (again); the count."""
    threads = share()
    torch = sys.modules.get("torch")
    if torch is not None and not torch.cuda.is_available() and torch.get_num_threads() != threads:
        log.info("%d thread(s): %d core(s), %d stage(s) running on this machine", threads, machine_cores(),
                 running_stages())
        torch.set_num_threads(threads)
    return threads


def take_share() -> int:
    """Register this process as a running stage (until it exits) and size its threads."""
    folder = runs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / str(os.getpid())
    mine.touch()
    atexit.register(mine.unlink, missing_ok=True)
    return keep_share()
