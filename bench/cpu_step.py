"""A faster fine-tuning step on the CPU? Training images per second of the default's net under each way of running
it, measured in one run, in rounds that take turns (so a machine shared with other work slows every way alike).

Ways: the stage's own (channels_last, the stage's threads), contiguous NCHW memory, ``torch.compile`` (inductor,
channels_last), and one thread fewer. Each way is a fresh copy of the same net, trained on the same random batches
at the recipe's batch and image size (forward, backward, AdamW step, as the stage's ``backward_step``); the first
steps of each (compilation, allocation) are not timed. Prints img/s per way, the median over rounds, and its ratio
to the stage's way: the issue's bar for keeping a way is 1.2x with the same CV.

    python bench/cpu_step.py                       # params.yaml's fine-tuned net
    python bench/cpu_step.py --rounds 5 --steps 6  # longer
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from pipeline.compute.cores import share
from pipeline.config import load_params
from pipeline.training.backbones import create_backbone
from pipeline.training.trainer import Trainer
from pipeline.views.image_data import Feed


def way(name: str, model: torch.nn.Module, recipe, threads: int, channels_last: bool, compiled: bool):
    """A trainer for one way of running the step, and its (inputs, targets) batch."""
    net = copy.deepcopy(model)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory)
    feed = Feed(torch.device("cpu"), recipe.batch_size, 0, [0.5] * 3, [0.5] * 3, None)
    trainer = Trainer(net, recipe, feed, steps_per_epoch=10**6)
    if compiled:
        trainer.trained = torch.compile(net)
    inputs = torch.randn(recipe.batch_size, 3, recipe.image_size, recipe.image_size).contiguous(memory_format=memory)
    targets = torch.randint(0, net.num_classes, (recipe.batch_size,))
    return {"name": name, "trainer": trainer, "threads": threads, "batch": (inputs, targets), "speeds": []}


def steps(entry: dict, count: int) -> float:
    """``count`` training steps of one way: images per second."""
    torch.set_num_threads(entry["threads"])
    trainer, (inputs, targets) = entry["trainer"], entry["batch"]
    trainer.trained.train()
    start = time.perf_counter()
    for _ in range(count):
        loss = torch.nn.functional.cross_entropy(trainer.trained(inputs).float(), targets)
        trainer.backward_step(loss)
    return count * len(inputs) / (time.perf_counter() - start)


def main() -> None:
    params = load_params()
    name = next(iter(params.finetune.models))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps of each way per round")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles ~2 min)")
    parser.add_argument("--cores", type=int, default=0, help="threads of the stage's way (0: this process's share "
                        "of the cores, as the stage takes it)")
    args = parser.parse_args()
    recipe = params.finetune.recipe(name)
    cores = args.cores or share()
    model = create_backbone(recipe.backbone, num_classes=10)
    ways = [way("the stage's (channels_last)", model, recipe, cores, True, False),
            way("contiguous NCHW", model, recipe, cores, False, False)]
    if cores > 1:
        ways.append(way(f"{cores - 1} thread(s)", model, recipe, cores - 1, True, False))
    if not args.no_compile:
        ways.append(way("torch.compile (inductor)", model, recipe, cores, True, True))
    print(f"{recipe.backbone} at {recipe.image_size} px, batch {recipe.batch_size}, {cores} cores, torch "
          f"{torch.__version__}")
    for entry in ways:  # warm-up: compilation, first allocations
        start = time.perf_counter()
        steps(entry, 2)
        print(f"  warm-up of {entry['name']}: {time.perf_counter() - start:.1f} s")
    for _ in range(args.rounds):
        for entry in ways:
            entry["speeds"].append(steps(entry, args.steps))
    reference = statistics.median(ways[0]["speeds"])
    for entry in ways:
        speed = statistics.median(entry["speeds"])
        print(f"{entry['name']:32s} {speed:7.1f} img/s  x{speed / reference:.2f}  "
              f"(rounds: {', '.join(f'{s:.1f}' for s in entry['speeds'])})")


if __name__ == "__main__":
    main()
