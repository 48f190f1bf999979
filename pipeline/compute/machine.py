"""What this process may use of the machine it is on, and every decision that follows from it, as pure functions.

A GPU box is where our users run and where our own runs never have: so each decision that differs there (how many
cores are really ours, the autocast dtype, DataLoader workers per rank, main-process threads, pinned memory) is a
function of the machine's properties, tested on a CPU with the properties of machines we do not have
(tests/test_machine.py). What reads the real machine is a few lines here (``read_cores``) and in
pipeline/compute/devices.py (``gpu_capability``: the one ``torch.cuda`` call); docs/gpu.md lists every such line.

Cores are the fewest of what the scheduler lets this process run on (CPU affinity: ``taskset``, a Slurm cpuset,
``docker --cpuset-cpus``), the container's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``: ``docker
--cpus``, a Kubernetes CPU limit) and Slurm's allocation (``SLURM_CPUS_PER_TASK``): ``os.cpu_count()`` is the
host's, and sizing by it gave 63 workers per rank on a 64-core node whatever the container was allowed.
No torch here: the frames stage sizes its decoding processes without importing it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Beside DataLoader workers the main process only launches GPU work; its idle intra-op threads spun on the cores the
# workers decode on. H100, 15 workers, bench/finetune.py: 756 img/s with 16 main-process threads, 2,335 with 2.
MAIN_THREADS_BESIDE_WORKERS = 2
# bf16 is native from compute capability 8.0 (A100, RTX 30xx, L4, H100); on a T4 (7.5), V100 (7.0) or P100 (6.0)
# torch.cuda.is_bf16_supported() says yes by counting emulation, which is slower than fp16 and loses more precision.
NATIVE_BF16_CAPABILITY = (8, 0)
# What a fold needs on its GPU beside frames held there: lite0 training at batch 128 and 224 px in bf16 peaks near 6
# GB, a three-region net near three times that; the rest is the allocator's slack.
RESIDENT_HEADROOM = 20 * 2**30


def cgroup_cpu_limit(self_cgroup: str, root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota (in cores) of the cgroup a process is in and of every cgroup above it, whichever is lowest;
    None when none sets one. ``self_cgroup`` is /proc/self/cgroup's text, ``root`` where cgroups are mounted."""
    limits = []
    for line in self_cgroup.splitlines():
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":  # cgroup v2: cpu.max is "<quota> <period>" or "max <period>"
            limits += [_v2_limit(folder / "cpu.max") for folder in _up_from(root, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's own mount
            for mount in {root / controllers, root / "cpu", root / "cpu,cpuacct"}:
                limits += [_v1_limit(folder) for folder in _up_from(mount, path)]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _up_from(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and each above it up to the mount. Inside a container's cgroup namespace the path is
    ``/`` and the mount is the container's own cgroup; where it is not, the path names folders below the mount."""
    parts = [part for part in path.strip("/").split("/") if part and part != ".."]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_limit(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def slurm_cpus(environ: Mapping[str, str]) -> int | None:
    """The cores Slurm gave this task (``--cpus-per-task``, else the job's on this node); None outside Slurm. With
    ``TaskPlugin=task/none`` Slurm pins nothing, so its variables are all a task has to go by."""
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if environ.get(key, "").isdigit() and int(environ[key]) > 0:
            return int(environ[key])
    return None


def usable_cores(affinity: int, quota: float | None, slurm: int | None) -> int:
    """The cores this process may keep busy: the fewest of the three, at least one. A fractional quota rounds down
    (``--cpus=1.5`` is one core busy and the rest headroom): a thread more than the quota is throttled, not faster."""
    cores = [affinity] + ([math.floor(quota)] if quota is not None else []) + ([slurm] if slurm else [])
    return max(min(cores), 1)


def read_cores(self_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> int:
    """``usable_cores`` of this process on this machine."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        cgroup = self_cgroup.read_text()
    except OSError:  # not Linux
        cgroup = ""
    return usable_cores(affinity, cgroup_cpu_limit(cgroup, root), slurm_cpus(os.environ))


def fold_processes(setting: int | str, visible_gpus: int, under_torchrun: bool) -> int:
    """How many processes a fold trains in (``finetune.devices``): ``auto`` one per visible GPU; none more when
    this process already is one of torchrun's."""
    if under_torchrun:
        return 1
    return max(visible_gpus, 1) if setting == "auto" else int(setting)


def devices_refusal(setting: int | str, visible_gpus: int) -> str | None:
    """Why ``finetune.devices`` cannot run here, or None. More processes than the GPUs present are refused, not
    clamped: each rank trains on its share of every epoch, so the process count is part of the recipe, and a
    run that quietly trained in fewer would not be the one its params describe. On a machine with no GPU the
    processes are CPU ranks (gloo), as many as asked."""
    if setting != "auto" and visible_gpus and int(setting) > visible_gpus:
        return (f"params.yaml: finetune.devices: {setting} processes asked for, and this machine shows "
                f"{visible_gpus} GPU{'s' if visible_gpus > 1 else ''}; set it to auto (one per GPU) or at most "
                f"{visible_gpus}")
    return None


def process_group_backend(gpus: bool) -> str:
    """torch.distributed's backend: NCCL between GPUs, gloo between CPU processes (how the tests run DDP)."""
    return "nccl" if gpus else "gloo"


def ddp_device_ids(device_type: str, index: int | None) -> list[int] | None:
    """DistributedDataParallel's ``device_ids``: this rank's GPU, or None for a CPU module."""
    return [index if index is not None else 0] if device_type == "cuda" else None


def autocast_dtype(device_type: str, capability: tuple[int, int] | None, amp: bool) -> str | None:
    """The autocast dtype's name: ``bfloat16`` on a GPU that computes it natively, ``float16`` (with loss scaling)
    on an older one, None (float32) on a CPU or with ``amp`` off: on our CPUs bf16 autocast trained slower."""
    if device_type != "cuda" or not amp:
        return None
    return "bfloat16" if capability is not None and tuple(capability) >= NATIVE_BF16_CAPABILITY else "float16"


def needs_loss_scaling(dtype: str | None) -> bool:
    """fp16's narrow range underflows small gradients: a GradScaler scales the loss; bf16 has float32's range."""
    return dtype == "float16"


def loader_workers(setting: int | str, device_type: str, cores: int) -> int:
    """DataLoader processes of one rank, ``cores`` being its share. ``auto``: on a GPU all of them but one (they
    decode, copy and augment what the GPU trains on); on a CPU none, since on 2 cores a worker process costs the
    model ~25 % and decoding in-process ~4 % (bench/features.py)."""
    if setting != "auto":
        return int(setting)
    return max(cores - 1, 1) if device_type == "cuda" else 0


def main_threads(device_type: str, cores: int, workers: int) -> int:
    """torch's intra-op threads in the main process: its share of the cores, or a couple beside GPU workers."""
    if device_type == "cuda" and workers:
        return min(MAIN_THREADS_BESIDE_WORKERS, cores)
    return cores


def training_steps(images: int, batch_size: int, world: int) -> tuple[int, bool]:
    """(steps per epoch of one rank, whether the last partial batch is dropped). Every batch full, as timm's loader
    has it: one batch shape per process, so cuDNN plans each convolution once (a cold plan costs a GPU seconds), and
    Mixup always has its pairs; the sampler reshuffles every epoch, so every image is still seen, and padding would
    leak into BatchNorm's batch statistics. A rank's share smaller than a batch (tiny data) is one batch."""
    share = -(-images // world)  # DistributedSampler evens the shares out
    if share < batch_size:
        return 1, False
    return share // batch_size, True


def pads_prediction(device_type: str) -> bool:
    """Whether predictions pad their last batch to the full batch's shape: on a GPU, where a new shape costs cuDNN
    plans; on a CPU the padding would only be computed and thrown away."""
    return device_type == "cuda"


def frames_resident(frames_bytes: int, memory: tuple[int, int] | None, headroom: int = RESIDENT_HEADROOM) -> bool:
    """Whether a process's frames are uploaded to its device once, so that batches are indexed there with no
    workers and no copies: where ``memory`` (free, total bytes of a GPU; None elsewhere) holds them and still leaves
    ``headroom`` for training. The development set's 2,511 frames at 320x240 are 0.58 GB; full State Farm's 102,150
    are 23.5 GB, which a 16 GB card (a T4) cannot hold: it keeps reading the memory-mapped cache in workers."""
    return memory is not None and frames_bytes + headroom <= memory[0]


def pin_memory(device_type: str) -> bool:
    """Page-locked batches copy to a GPU asynchronously; a CPU model reads them where they are."""
    return device_type == "cuda"
