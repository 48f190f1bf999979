"""What a run's stages cost before it starts: seconds per image measured on this machine, on a T4 and an H100 from
bench/gpu_costs.csv, and the arithmetic from a stage's image counts to its seconds (``python -m pipeline.plan``).

On this machine a short calibration times each backbone at its size, a training step and a forward pass (batch 16,
channels-last as the stages run a net, the fastest of three after two warm-ups); a frame as the frames stage's
workers make one (decoded, fitted, written into a row of a memory-mapped array that is flushed every 64); MD5 over
memory, which DVC spends on every byte a stage writes (the frame cache: 24 GB at State Farm's full count, ~30 s); a
head's training step on each features backbone (the heads stage); and the ensemble's neighbour search, per pair of
images, in each of its spaces. Nets are timed in a process that keeps the memory it frees, as a stage does
(pipeline/compute/cores.py). It is cached per machine (CPU model, cores, torch version) under
``~/.cache/kaggle-image-pipeline/costs.json``, unless it ran beside other work: a figure timed with less than
``BUSY`` of its threads' time (a `dvc repro` on the same cores halves it, and doubles or triples the figure) is used
once and timed again next time. A GPU's rate for the reference net (lite0 at 224 px) comes from bench/gpu_costs.csv,
each figure with its source; another net or size is that rate scaled by its forward pass's FLOPs against the
reference's (counted by torch's FlopCounterMode: the same on every machine, where the nets' seconds here vary by
~20 % between calibrations and once put lite0 above lite1). GPU figures are estimates until a card measures them,
and the table says so; a card's machine hashes, trains heads and searches neighbours at this machine's figures (MD5
runs on one core of any x86 CPU at about the same speed; heads are ~1 % of a run). How close each figure came at
State Farm's full count: bench/full_count.csv, docs/results.md.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
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
BATCH = 16  # per image, this CPU trains lite1 at 176 px faster at 16 (0.036 s) than at 32 (0.048), the stage's batch
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
    """A machine's rates: a net's per-image seconds, a frame's seconds on one core (decoded and written), its cores,
    the bytes a second MD5 hashes, and a head's training step per sample on each backbone's features."""

    name: str
    nets: dict[tuple[str, int], ImageCost]
    decode: float
    cores: int
    estimate: bool  # scaled from another machine's figures, not measured on this one
    busy: bool = False  # some figures were timed beside other work (slow, not cached)
    md5: float = float("inf")  # bytes a second
    heads: dict[str, float] = field(default_factory=dict)  # backbone -> seconds per sample stepped
    # (backbone, regions) -> seconds per (query, row) pair of the ensemble's neighbour search in that space
    neighbours: dict[tuple[str, int], float] = field(default_factory=dict)

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
    from pipeline.compute.cores import keep_freed_memory
    from pipeline.training.backbones import create_backbone

    keep_freed_memory()  # as a stage's process allocates: the freed activations kept, not faulted in again
    model = create_backbone(backbone, num_classes=10, pretrained=False)
    flops = forward_flops(model, size)
    # channels-last, as pipeline/stages/features.py and pipeline/training/fold_training.py run a net: on a CPU
    # oneDNN's depthwise convolutions take half the time they take contiguous
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
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


def sample_jpeg() -> bytes:
    """A 640x480 JPEG (State Farm's size) of photo-like detail: it decodes in ~1.0 ms here, as the full count's
    stand-in photos do (real State Farm photos: ~0.75 ms)."""
    import cv2

    pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", cv2.GaussianBlur(pixels, (9, 9), 3))[1].tobytes()


def frame_shape(size: int) -> tuple[int, int]:
    """The frame (height, width) the frames stage caches for a 640x480 image at ``size`` (pipeline/data/frames.py)."""
    from pipeline.data.decoding import decode_rgb

    return decode_rgb(sample_jpeg(), "calibration", (size, size)).shape[:2]


def time_decode(size: int, images: int = 64) -> tuple[float, float]:
    """(seconds one core spends on a frame as the frames stage's workers make it: a 640x480 JPEG decoded to at
    least ``size`` px, fitted, written into a row of a memory-mapped array (first touch of fresh pages) that is
    flushed to disk after ``images`` (the stage's task); the share of that core's time it had)."""
    from pipeline.data.decoding import decode_rgb
    from pipeline.data.frames import fit_frame, new_frames

    data, shape = sample_jpeg(), frame_shape(size)
    with tempfile.TemporaryDirectory() as scratch:
        frames = new_frames(Path(scratch), "calibration", images * 4, shape)
        runs = iter(range(4))  # two warm-ups, then the fastest of two: each into rows not touched before

        def task() -> None:
            start = next(runs) * images
            for row in range(start, start + images):
                frames[row] = fit_frame(decode_rgb(data, "calibration", (size, size)), shape)
            frames.flush()

        seconds, share = _fastest(task, threads=1, warm_ups=2, runs=2)
        del frames
    return seconds / images, share


def time_md5(megabytes: int = 64) -> tuple[float, float]:
    """(bytes a second MD5 hashes, as DVC hashes each output a stage writes; the share of a core it had)."""
    data = np.random.default_rng(0).integers(0, 255, megabytes << 20, dtype=np.uint8).tobytes()
    seconds, share = _fastest(lambda: hashlib.md5(data, usedforsecurity=False).digest(), threads=1)
    return len(data) / seconds, share


def time_head(backbone: str, hidden: int, batch: int) -> tuple[float, float]:
    """(seconds per sample of one training step of the heads stage's head (pipeline/training/head_model.py) on
    ``backbone``'s features, ``hidden`` units, ``batch`` samples a step, AdamW; the share of its threads' time)."""
    from pipeline.training.backbones import create_backbone
    from pipeline.training.head_model import make_head
    from pipeline.training.schedule import warmup_cosine

    steps = 20
    dim = create_backbone(backbone, num_classes=0, pretrained=False).num_features
    head = make_head(dim, hidden, 10, 0.5)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    schedule = warmup_cosine(optimizer, steps, 10 * steps)
    inputs, labels = torch.randn(steps * batch, dim), torch.randint(0, 10, (steps * batch,))

    def epoch() -> None:  # as the stage steps: a random batch indexed out of every sample
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), batch):
            rows = order[start:start + batch]
            loss = torch.nn.functional.cross_entropy(head(inputs[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

    seconds, share = _fastest(epoch, torch.get_num_threads(), warm_ups=1, runs=3)
    return seconds / len(inputs), share


def time_neighbours(backbone: str, regions: int, rows: int = 4096) -> tuple[float, float]:
    """(seconds per (query, row) pair of the ensemble's neighbour search (pipeline/data/neighbours.py's ``nearest``
    itself: ``rows`` among themselves) in rows as wide as ``backbone``'s pooled features times
    ``regions``; the share of its threads' time). A pair costs the same at 4,096 rows as at 20,000 (1.6e-8 s for
    1,280 wide here): the matrix product's, linear in the width."""
    from pipeline.data.neighbours import nearest
    from pipeline.training.backbones import create_backbone

    width = create_backbone(backbone, num_classes=0, pretrained=False).num_features * regions
    space = np.random.default_rng(0).standard_normal((rows, width), dtype=np.float32)
    seconds, share = _fastest(lambda: nearest(space, np.zeros(rows), 20), torch.get_num_threads())
    return seconds / rows ** 2, share


def neighbour_spaces(params: Params) -> dict[str, tuple[str, int]]:
    """The ensemble's neighbour spaces (pipeline/stages/ensemble.py's candidates): name -> (backbone, regions)."""
    settings, spaces = params.ensemble, {}
    for name in settings.neighbour_features if settings.neighbours else ():
        if not name.startswith(("finetune-", "pseudo-")):
            spaces[name] = (name, 1)  # a backbone's cached features
        elif name in settings.models:  # a fine-tuned model's embeddings: its regions side by side
            recipe = params.finetune.recipe(name.split("-", 1)[1])
            spaces[name] = (recipe.backbone, len(recipe.regions))
    return spaces


def this_machine(params: Params, cache: Path | None = None) -> Machine:
    """This machine's rates for the nets, frames and heads of ``params``: from the cache, else timed now and cached
    (a figure timed beside other work is used for this run only: the Machine says ``busy``)."""
    cache = cache or CACHE
    key = machine_key()
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    mine = known.setdefault(key, {})
    now = {}  # timed beside other work: this run's figures, not the cache's
    wanted = list(dict.fromkeys([REFERENCE, *nets_of(params)]))
    hidden, batch = params.heads.hidden, params.heads.batch_size
    heads = {backbone: f"head@{backbone}@{hidden}x{batch}" for backbone in params.features.backbones}
    # the search as a matrix product and top-k: a figure of scikit-learn's k-NN (2.3x slower) is not read
    searches = {space: f"neighbours@{space[0]}x{space[1]}@matmul" for space in neighbour_spaces(params).values()}
    frame, md5 = f"frame@{params.frames.size}", "md5"
    timed = False
    # timed channels-last, as the stages run them: a figure of an older version (contiguous: lite1's training step
    # 0.051 s an image against 0.036, its forward pass 0.016 against 0.009) is not read
    named = {(b, s): f"{b}@{s}@channels_last" for b, s in wanted}
    for (backbone, size), name in named.items():
        if name not in mine:
            cost = time_net(backbone, size)
            (mine if cost.share >= BUSY else now)[name] = [cost.forward, cost.train, cost.flops]
            timed = True
    scalars = {frame: lambda: time_decode(params.frames.size), md5: time_md5,
               **{name: (lambda b=backbone: time_head(b, hidden, batch)) for backbone, name in heads.items()},
               **{name: (lambda s=space: time_neighbours(*s)) for space, name in searches.items()}}
    for name, timing in scalars.items():
        if name not in mine:
            figure, share = timing()
            (mine if share >= BUSY else now)[name] = figure
            timed = True
    if timed:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=2) + "\n")
    figures = {**mine, **now}
    return Machine("here", {key: ImageCost(*figures[name]) for key, name in named.items()}, figures[frame],
                   os.cpu_count() or 1, estimate=False, busy=bool(now), md5=figures[md5],
                   heads={backbone: figures[name] for backbone, name in heads.items()},
                   neighbours={space: figures[name] for space, name in searches.items()})


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
                                estimate=row["measured"] != "yes", md5=here.md5, heads=here.heads,
                                neighbours=here.neighbours))
    return machines


@dataclass(frozen=True)
class Work:
    """What a stage does, in images: a net's forward passes and training steps, frames made, samples a head is
    stepped on, and the bytes DVC hashes once the stage has written them."""

    images: int  # the images the stage reads (what the table shows)
    forward: tuple[tuple[str, int, float], ...] = ()  # (backbone, size, images) inferred
    train: tuple[tuple[str, int, float], ...] = ()  # (backbone, size, images) trained on, epochs counted
    decode: float = 0.0  # frames made (decoded and written), spread over the machine's cores
    heads: tuple[tuple[str, float], ...] = ()  # (backbone, samples) a head steps over, epochs and folds counted
    pairs: tuple[tuple[tuple[str, int], float], ...] = ()  # ((backbone, regions), pairs) a neighbour search compares
    hashed: float = 0.0  # bytes of output

    def seconds(self, machine: Machine) -> float:
        spent = sum(machine.net(b, s).forward * n for b, s, n in self.forward)
        spent += sum(machine.net(b, s).train * n for b, s, n in self.train)
        spent += sum(machine.heads[backbone] * n for backbone, n in self.heads)
        spent += sum(machine.neighbours[space] * n for space, n in self.pairs)
        return spent + self.decode * machine.decode / machine.cores + self.hashed / machine.md5


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
        height, width = frame_shape(params.frames.size)
        return Work(train + test, decode=train + test, hashed=(train + test) * height * width * 3)
    views, passes = len(params.features.test_views), params.features.train_passes
    if name == "features":
        size = params.features.backbones[item].image_size
        return Work(train + test, forward=((item, size, train * (views + passes) + test * views),))
    if name == "heads":  # a head per fold on every train view and augmented pass; again on a random split
        splits, settings = params.folds.n_splits, params.heads
        samples = train * (splits - 1) * (views + passes) * settings.epochs * (1 + settings.random_split_check)
        return Work(train, heads=((item, samples),))
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
    if name == "ensemble":  # each space searched within each fold; the test images among themselves, in the space
        # the ensemble picks: counted in the one with the most regions, the widest (EfficientNet-lite's are 1,280 each)
        spaces, splits = list(neighbour_spaces(params).values()), params.folds.n_splits
        pairs = [(space, splits * (train / splits) ** 2) for space in spaces]
        pairs += [(max(spaces, key=lambda space: space[1]), test ** 2)] if spaces else []
        return Work(train + test, pairs=tuple(pairs))
    return Work(0)  # sample, folds, submission: seconds, whatever the machine


def nets_of(params: Params) -> list[tuple[str, int]]:
    nets = [(backbone, b.image_size) for backbone, b in params.features.backbones.items()]
    for model in params.finetune.models:
        recipe = params.finetune.recipe(model)
        nets += [(recipe.backbone, recipe.image_size), (recipe.backbone, recipe.test_image_size or recipe.image_size)]
    return list(dict.fromkeys(nets))


def dvc_stages(params_text: str) -> tuple[list[str], set[str]]:
    """(every stage in dvc.yaml's order, those DVC would run) for params.yaml holding ``params_text``: laid over the
    workspace's params.yaml while DVC looks, then put back. ``repo.status()`` names only the stages whose own deps or
    params changed; every stage that depends on one of them runs too (DVC's graph points from a stage to those it
    depends on)."""
    from dvc.repo import Repo

    from pipeline.config import PARAMS_FILE

    saved = PARAMS_FILE.read_text()
    try:
        PARAMS_FILE.write_text(params_text)
        with Repo(".") as repo:
            stages = [s.addressing for s in repo.index.stages]
            status = repo.status()
            changed = [s for s in repo.index.stages if s.addressing in status]
            graph, waiting = repo.index.graph, list(changed)
            to_run = {s.addressing for s in changed}
            while waiting:  # walk up the edges: every stage that depends on one to run
                for stage in graph.predecessors(waiting.pop()):
                    if stage.addressing not in to_run:
                        to_run.add(stage.addressing)
                        waiting.append(stage)
    finally:
        PARAMS_FILE.write_text(saved)
    return stages, {s for s in stages if s in to_run}


def kaggle_session(params: Params, spec: CompetitionSpec, stages: list[str]) -> tuple[dict[str, float], bool]:
    """Each of ``stages``' seconds on one T4 (bench/gpu_costs.csv's row, scaled by this machine's calibration) and
    whether that figure is an estimate: what a Kaggle session of this run would spend, nothing cached there."""
    train, test, _ = image_counts(params, spec)
    here = this_machine(params)
    [t4] = [m for m in gpu_machines(here, GPU_TABLE) if m.name == "T4"]
    seconds = {}
    for stage in stages:
        work = stage_work(stage, params, spec, train, test)
        seconds[stage] = work.seconds(t4) if work else 0.0
    return seconds, t4.estimate
