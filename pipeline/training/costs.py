"""What a run's stages cost before it starts: seconds per image measured on this machine, on a T4 and an H100 from
bench/gpu_costs.csv, and the arithmetic from a stage's image counts to its seconds (``python -m pipeline.plan``).

On this machine a short calibration times each backbone at its size, a training step and a forward pass (batch
16, the fastest of three after two warm-ups), and one JPEG decode as the frames stage decodes
(pipeline/data/decoding.py); it is cached per machine (CPU model, cores, torch version) under
``~/.cache/kaggle-image-pipeline/costs.json``, unless it ran beside other work: a figure timed with less than
``BUSY`` of its threads' time (a `dvc repro` on the same cores halves it, and doubles or triples the figure) is used
once and timed again next time. A GPU's rate for
the reference net (lite0 at 224 px) comes from bench/gpu_costs.csv, each figure with its source; another net or
size is that rate scaled by its forward pass's FLOPs against the reference's (counted by torch's FlopCounterMode:
the same on every machine, where the nets' seconds here vary by ~20 % between calibrations and once put lite0 above
lite1). GPU figures are estimates until a card measures them, and the table says so.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Params
from pipeline.data.competitions import CompetitionSpec, finetune_views
from pipeline.errors import PipelineError
from pipeline.paths import raw_dir

GPU_TABLE = Path("bench/gpu_costs.csv")  # from the repository's root, where DVC runs
REFERENCE = ("tf_efficientnet_lite0", 224)  # the net and size bench/gpu_costs.csv's rates are of
CACHE = Path.home() / ".cache" / "kaggle-image-pipeline" / "costs.json"
BATCH = 16
BUSY = 0.8  # of its threads' time: below it, a calibration ran beside other work (alone ~0.95-1.0; beside a run ~0.5)


@dataclass(frozen=True)
class ImageCost:
    """Seconds per image of one net at one size on one machine."""

    forward: float  # inference
    train: float  # a training step's share: forward, backward, the optimizer
    flops: float = 0.0  # one image's forward pass, counted: what a card's rates are scaled by
    share: float = 1.0  # of its threads' time the timing had (under BUSY: other work ran beside it)


@dataclass(frozen=True)
class Machine:
    """A machine's rates: a net's per-image seconds, decoding's per-image seconds on one core, and its cores."""

    name: str
    nets: dict[tuple[str, int], ImageCost]
    decode: float
    cores: int
    estimate: bool  # scaled from another machine's figures, not measured on this one
    busy: bool = False  # some figures were timed beside other work (slow, not cached)

    def net(self, backbone: str, size: int) -> ImageCost:
        return self.nets[(backbone, size)]


def machine_key() -> str:
    """What the calibration is cached under: the CPU, its cores, torch's version."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} x{os.cpu_count()} torch {torch.__version__}"


def time_net(backbone: str, size: int, batch: int = BATCH) -> ImageCost:
    """One forward pass and one training step of ``backbone`` at ``size`` px, per image (the fastest of three runs
    after two that allocate and plan), and one image's forward FLOPs."""
    from pipeline.training.backbones import create_backbone

    model = create_backbone(backbone, num_classes=10, pretrained=False)
    flops = forward_flops(model, size)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def forward() -> None:
        with torch.inference_mode():
            model(images)

    threads = torch.get_num_threads()
    # The training step first: a forward pass timed first in a process read ~0.03 s an image for lite0 at 224 px
    # (and a cached 0.036 put the full count's features 46 % over their 2,502 s), ~0.016 once anything had run (the
    # allocator's first large blocks, fresh pages from the OS); the step's timing is steady either way.
    (train_s, train_share) = _fastest(step, threads, warm_ups=2, runs=3)
    (forward_s, forward_share) = _fastest(forward, threads, warm_ups=2, runs=3)
    return ImageCost(forward=forward_s / batch, train=train_s / batch, flops=flops,
                     share=min(forward_share, train_share))


def forward_flops(model: torch.nn.Module, size: int) -> float:
    """One ``size`` px image's forward pass through ``model`` in FLOPs (a multiply-add is two), as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    training = model.training
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.eval()(torch.randn(1, 3, size, size))  # one image: batch norm as at inference
    model.train(training)
    return float(counter.get_total_flops())


def _fastest(call, threads: int, warm_ups: int = 1, runs: int = 2) -> tuple[float, float]:
    """(the fastest of ``runs`` timed calls after ``warm_ups`` (the first calls of a shape allocate and plan), the
    share of ``threads`` cores' time this process had during it: CPU seconds over wall seconds x threads)."""
    for _ in range(warm_ups):
        call()
    timed = []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        timed.append((wall, cpu / (wall * threads)))
    return min(timed)


def time_decode(size: int) -> tuple[float, float]:
    """(seconds to decode one 640x480 JPEG to at least ``size`` px on its short side as the frames stage does, on
    one core; the share of that core's time it had)."""
    import cv2

    from pipeline.data.decoding import decode_rgb

    pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", cv2.GaussianBlur(pixels, (9, 9), 3))[1].tobytes()
    shape = (size * 4 // 3, size)
    seconds, share = _fastest(lambda: [decode_rgb(data, "calibration", shape) for _ in range(10)], threads=1)
    return seconds / 10, share


def this_machine(nets: list[tuple[str, int]], frame_size: int, cache: Path | None = None) -> Machine:
    """This machine's rates for ``nets``: from the cache, else timed now and cached (a figure timed beside other
    work is used for this run only: the Machine says ``busy``)."""
    cache = cache or CACHE
    key = machine_key()
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    mine = known.setdefault(key, {})
    now = {}  # timed beside other work: this run's figures, not the cache's
    wanted = list(dict.fromkeys([REFERENCE, *nets]))
    timed = False
    # a figure cached before FLOPs were counted (two numbers, not three) is timed again
    for backbone, size in [(b, s) for b, s in wanted if len(mine.get(f"{b}@{s}", ())) != 3]:
        cost = time_net(backbone, size)
        (mine if cost.share >= BUSY else now)[f"{backbone}@{size}"] = [cost.forward, cost.train, cost.flops]
        timed = True
    if f"decode@{frame_size}" not in mine:
        seconds, share = time_decode(frame_size)
        (mine if share >= BUSY else now)[f"decode@{frame_size}"] = seconds
        timed = True
    if timed:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=2) + "\n")
    figures = {**mine, **now}
    return Machine("here", {(b, s): ImageCost(*figures[f"{b}@{s}"]) for b, s in wanted},
                   figures[f"decode@{frame_size}"], os.cpu_count() or 1, estimate=False, busy=bool(now))


def gpu_machines(here: Machine, table: Path) -> list[Machine]:
    """Each card of ``table`` (bench/gpu_costs.csv), its rates for the nets ``here`` knows: the reference net's
    measured or estimated rate, scaled by each net's forward FLOPs against the reference's (training too: a
    step's FLOPs are ~3x its forward pass's for each of these nets)."""
    try:
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise PipelineError(f"{table}: cannot be read ({error.strerror})") from None
    reference = here.net(*REFERENCE)
    machines = []
    for row in rows:
        if row["use"] != "yes":
            continue
        nets = {key: ImageCost(forward=cost.flops / reference.flops / float(row["forward_img_s"]),
                               train=cost.flops / reference.flops / float(row["train_img_s"]), flops=cost.flops)
                for key, cost in here.nets.items()}
        machines.append(Machine(row["device"], nets, 1.0 / float(row["decode_img_s_per_core"]), int(row["cores"]),
                                estimate=row["measured"] != "yes"))
    return machines


@dataclass(frozen=True)
class Work:
    """What a stage does, in images: a net's forward passes and training steps, and decodes."""

    images: int  # the images the stage reads (what the table shows)
    forward: tuple[tuple[str, int, float], ...] = ()  # (backbone, size, images) inferred
    train: tuple[tuple[str, int, float], ...] = ()  # (backbone, size, images) trained on, epochs counted
    decode: float = 0.0  # images decoded

    def seconds(self, machine: Machine) -> float:
        spent = sum(machine.net(b, s).forward * n for b, s, n in self.forward)
        spent += sum(machine.net(b, s).train * n for b, s, n in self.train)
        return spent + self.decode * machine.decode / machine.cores


def image_counts(params: Params, spec: CompetitionSpec) -> tuple[int, int, str]:
    """(train images, test images, where the counts come from): the raw data's, else the competition's."""
    from pipeline.data.raw_data import load_test_ids, train_table

    raw = raw_dir(spec.slug)
    if (raw / spec.sample_submission).is_file():
        train, test, source = len(train_table(raw, spec)), len(load_test_ids(raw, spec)), str(raw)
    elif spec.official_counts:
        train, test = spec.official_counts["train"], spec.official_counts["test"]
        source = f"competitions/{spec.slug}.yaml (official_counts)"
    else:
        raise PipelineError(f"{raw}: no data yet and competitions/{spec.slug}.yaml gives no official_counts; run "
                            f"`dvc repro download` first")
    share = params.data.sample
    return round(train * share), round(test * share), source + (f", data.sample={share:g}" if share < 1 else "")


def stage_work(stage: str, params: Params, spec: CompetitionSpec, train: int, test: int) -> Work | None:
    """What ``stage`` (as DVC names it: ``finetune@net-0``) does, in images."""
    name, _, item = stage.partition("@")
    if name == "download":
        return None
    if name == "frames":
        return Work(train + test, decode=train + test)
    if name == "features":
        size = params.features.backbones[item].image_size
        passes = train * (1 + params.features.train_passes) + test * len(params.features.test_views)
        return Work(train + test, forward=((item, size, passes),))
    if name in ("finetune", "pseudo"):
        model = item.rsplit("-", 1)[0]
        recipe = params.finetune.recipe(model)
        regions, splits = len(recipe.regions), params.folds.n_splits
        trained = train * (splits - 1) / splits + (test if name == "pseudo" else 0)
        predicted = (train / splits + test) * len(finetune_views(params, spec))
        size = recipe.test_image_size or recipe.image_size
        return Work(round(trained + train / splits + test),
                    forward=((recipe.backbone, size, predicted * regions),),
                    train=((recipe.backbone, recipe.image_size, trained * recipe.epochs * regions),))
    return Work(0)  # sample, folds, heads, ensemble, submission: seconds, whatever the machine


def nets_of(params: Params) -> list[tuple[str, int]]:
    nets = [(backbone, b.image_size) for backbone, b in params.features.backbones.items()]
    for model in params.finetune.models:
        recipe = params.finetune.recipe(model)
        nets += [(recipe.backbone, recipe.image_size), (recipe.backbone, recipe.test_image_size or recipe.image_size)]
    return list(dict.fromkeys(nets))


def dvc_stages(params_text: str) -> tuple[list[str], set[str]]:
    """(every stage in dvc.yaml's order, those DVC would run) for params.yaml holding ``params_text``: laid over the
    workspace's params.yaml while DVC looks, then put back."""
    from dvc.repo import Repo

    from pipeline.config import PARAMS_FILE

    saved = PARAMS_FILE.read_text()
    try:
        PARAMS_FILE.write_text(params_text)
        with Repo(".") as repo:
            stages = [s.addressing for s in repo.index.stages]
            changed = set(repo.status())
    finally:
        PARAMS_FILE.write_text(saved)
    return stages, {s for s in stages if s in changed}


def kaggle_session(params: Params, spec: CompetitionSpec, stages: list[str]) -> tuple[dict[str, float], bool]:
    """Each of ``stages``' seconds on one T4 (bench/gpu_costs.csv's row, scaled by this machine's calibration) and
    whether that figure is an estimate: what a Kaggle session of this run would spend, nothing cached there."""
    train, test, _ = image_counts(params, spec)
    here = this_machine(nets_of(params), params.frames.size)
    [t4] = [m for m in gpu_machines(here, GPU_TABLE) if m.name == "T4"]
    seconds = {}
    for stage in stages:
        work = stage_work(stage, params, spec, train, test)
        seconds[stage] = work.seconds(t4) if work else 0.0
    return seconds, t4.estimate
