"""The run's cost before it starts: every stage DVC would run, its images and its estimated time here, on one T4 and
on one H100 (pipeline/training/costs.py says how each is estimated).

    python -m pipeline.plan                                 # params.yaml as it stands
    python -m pipeline.plan --preset presets/gpu.yaml -S finetune.models.net.epochs=10

The counts are the raw data's when it is there, else the competition's own (``official_counts`` in its
description). Stages DVC would skip (their outputs cached for these params) cost nothing and say so. The first run
on a machine times each net for a few seconds; later runs read the figures from the cache.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PARAMS_FILE, load_params
from pipeline.data.competitions import competition_of
from pipeline.errors import cli
from pipeline.training.costs import (GPU_TABLE, Machine, Work, dvc_stages, gpu_machines, image_counts, stage_work,
                                     this_machine)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    stage: str
    work: Work | None  # None: not estimated (a download: the network's time)
    cached: bool


def plan(preset: Path | None, overrides: list[str]) -> tuple[list[Row], list[Machine], str]:
    from pipeline.kaggle.train_run import run_params

    with tempfile.TemporaryDirectory() as scratch:
        laid = Path(scratch) / "params.yaml"
        shutil.copy2(PARAMS_FILE, laid)
        run_params(laid, preset.read_text() if preset else "", overrides)
        params, text = load_params(laid), laid.read_text()
    spec = competition_of(params)
    train, test, source = image_counts(params, spec)
    stages, to_run = dvc_stages(text)
    rows = [Row(s, stage_work(s, params, spec, train, test), s not in to_run) for s in stages]
    here = this_machine(params)
    return rows, [here, *gpu_machines(here, GPU_TABLE)], f"{train:,} train and {test:,} test images ({source})"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table(rows: list[Row], machines: list[Machine]) -> tuple[list[str], dict[str, float]]:
    """The printed table's lines and each machine's total seconds."""
    names = [m.name + (" (est.)" if m.estimate else "") for m in machines]
    lines = [f"{'stage':<34}{'images':>10}" + "".join(f"{n:>16}" for n in names)]
    totals = {m.name: 0.0 for m in machines}
    for row in rows:
        if row.cached:
            cells = ["cached"] * len(machines)
        elif row.work is None:
            cells = ["network"] * len(machines)
        else:
            cells = []
            for machine in machines:
                seconds = row.work.seconds(machine)
                totals[machine.name] += seconds
                cells.append(duration(seconds))
        images = f"{row.work.images:,}" if row.work and row.work.images else ""
        lines.append(f"{row.stage:<34}{images:>10}" + "".join(f"{c:>16}" for c in cells))
    lines.append(f"{'total':<34}{'':>10}" + "".join(f"{duration(totals[m.name]):>16}" for m in machines))
    return lines, totals


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, help="a preset laid over params.yaml first, e.g. presets/gpu.yaml")
    parser.add_argument("-S", "--set-param", action="append", default=[], dest="overrides",
                        help="a param, as `dvc exp run -S` takes it (repeat for more)")
    args = parser.parse_args()
    rows, machines, counts = plan(args.preset, args.overrides)
    lines, _ = table(rows, machines)
    log.info("%s\n%s", counts, "\n".join(lines))
    log.info("here: measured on this machine (%d cores); est.: bench/gpu_costs.csv's figures scaled by each net's "
             "forward FLOPs (a T4 has not measured one)", machines[0].cores)
    if machines[0].busy:
        log.warning("here: some figures were timed beside other work on this machine's cores, so they are too slow "
                    "and were not cached; run the plan again when the machine is quiet")


if __name__ == "__main__":
    main()
