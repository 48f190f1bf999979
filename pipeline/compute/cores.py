"""Each running stage its share of this process's cores, taken once when the stage starts and kept to its end.

torch sizes its intra-op pool to every core, and OpenMP's threads spin while they wait: two runs of two threads
each on two cores ran fine-tuning 2.3x slower than the same runs one after the other (docs/results.md). So every
stage process (``stage_command`` below) registers itself in a folder each run on this machine sees
(``$PIPELINE_RUNS_DIR``, default ``<tmp>/kaggle-image-pipeline-<uid>``) and takes ``cores // stages running``
(cores: pipeline/compute/machine.py's ``read_cores``, the container's quota and Slurm's allocation included). The share
is fixed for the stage's whole run: CPU training's last digits depend on the thread count (~0.02 of nested CV on the
stand-in, docs/results.md), so a fold trains under one count, which the finetune stage records with its run
(``threads`` in its metrics); ``OMP_NUM_THREADS`` sets it outright, to reproduce a run or to pin a sweep (the
tests set 1). On a GPU the share sizes the rank's DataLoader workers (pipeline/compute/machine.py).

A registration is a file named by the pid holding the process's start time: a stage SIGKILLed before it could
remove its file leaves a pid the system may give to another process later, which then is not counted.

A stage also keeps the memory it frees (``keep_freed_memory``): glibc hands every block above its mmap threshold
(32 MB at most: lite0's first feature map at 224 px is 51 MB for a batch of 32) back to the OS when freed, and the
next batch faults it in again, page by page, zeroed. On 2 cores that was 2,093 of the full-count features stage's
4,729 CPU seconds, in the kernel (docs/results.md); bench/allocator.py measures it.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Callable

import psutil

from pipeline.compute.machine import read_cores
from pipeline.errors import cli

log = logging.getLogger(__name__)


def runs_dir() -> Path:
    return Path(os.environ.get("PIPELINE_RUNS_DIR") or Path(tempfile.gettempdir()) /
                f"kaggle-image-pipeline-{os.getuid()}")


def machine_cores() -> int:
    return read_cores()


def _started(pid: int) -> str | None:
    """The process's start time as registrations record it; None when there is no such process."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # another user's process: alive, start time unknown
        return "?"


def _registered_and_running(entry: Path) -> bool:
    """The stage that registered ``entry`` is still running: its pid is alive and started when it said."""
    try:
        recorded = entry.read_text().strip()
    except OSError:
        return False
    started = _started(int(entry.name))
    return started is not None and (started == recorded or started == "?")


def running_stages() -> int:
    """Stage processes registered on this machine and still running, this one included (registered or not);
    stale entries removed."""
    alive = 0
    for entry in runs_dir().glob("*"):
        if entry.name.isdigit() and _registered_and_running(entry):
            alive += 1
        else:
            entry.unlink(missing_ok=True)
    return alive + (not _registration().exists())


def _explicit() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return max(int(value), 1) if value.isdigit() else None


@functools.cache
def share() -> int:
    """This process's share of the cores, decided once: ``OMP_NUM_THREADS`` when set, else cores // stages
    running (this one included, registered or not)."""
    explicit = _explicit()
    if explicit is not None:
        return explicit
    cores, stages = machine_cores(), running_stages()
    threads = max(cores // stages, 1)
    if stages > 1:  # alone, a stage takes every core and says nothing; sharing is worth a line
        log.info("%d thread(s): %d core(s), %d stage(s) running on this machine", threads, cores, stages)
    return threads


def _registration() -> Path:
    return runs_dir() / str(os.getpid())


def take_share() -> int:
    """Register this process as a running stage (until it exits), decide its share and size torch's threads to it
    when torch is loaded (a GPU process sizes them again beside its workers: pipeline/views/image_data.py)."""
    folder = runs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    mine = _registration()
    mine.write_text(_started(os.getpid()) or "")
    atexit.register(mine.unlink, missing_ok=True)
    share.cache_clear()
    threads = share()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


# mallopt(3)'s parameters (malloc.h): how many blocks may be mmapped, how much free memory the heap's top keeps
M_MMAP_MAX, M_TRIM_THRESHOLD = -4, -1
KEPT_FREE = 1 << 30  # bytes of free memory the heap's top may hold before it is handed back


def allocator_settings(libc: str) -> list[tuple[int, int]]:
    """The mallopt calls that keep a process's freed memory for its next allocations: on glibc, no block mmapped
    (every block from the heap; a thread's arena still maps one it cannot hold) and up to ``KEPT_FREE`` kept at
    the heap's top; another C library (musl, macOS) keeps its own ways."""
    return [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEPT_FREE)] if libc == "glibc" else []


def keep_freed_memory() -> None:
    """This process's allocator keeps what it frees (glibc; see the module's docstring). Set at a stage's start:
    blocks allocated before keep their ways."""
    for parameter, value in allocator_settings(platform.libc_ver()[0]):
        ctypes.CDLL(None).mallopt(parameter, value)


def start_stage() -> None:
    """What a stage process does first: take its share of the cores, keep the memory it frees."""
    take_share()
    keep_freed_memory()


def give_back() -> None:
    """Stop counting as a running stage: a process that only waits for its children (torchrun's parent)."""
    _registration().unlink(missing_ok=True)


def stage_command(main: Callable[[], None]) -> Callable[[], None]:
    """A stage's ``main`` as its command: ``cli``'s logging, one-line errors and timing, with the stage's share of
    the cores taken first and its allocator told to keep what it frees (commands that mostly wait, submit and
    leaderboard, use ``cli`` alone)."""
    return cli(main, start=start_stage)
