"""The quality levers on real photos, one committed row at a time: a named list of `dvc exp run`s, in order, each
appending its row to a table the moment it ends.

Run it in a clone of the project at a commit (``dvc exp`` needs one), alone on the machine, with the development
set given as a local copy of the competition:

    python bench/levers.py --data ../shared/data/statefarm-dev --table /path/to/main/docs/levers.csv

Each row is the default plus its overrides (params.yaml is reset to the commit's before every row, so rows do
not leak into each other). A row already in the table for this commit is skipped, so when work resumes the list
is picked up at the first row without a result; commit the table as rows arrive. ``{size}`` in an override is the fine-tuning
size whose row scored the best nested CV so far (the resolution ladder decides it, the later rows use it).

A row records the ensemble's nested CV and its fine-tuned net's CV, the unseen drivers' log loss (all, public,
private) scored against the local copy's solution.csv, wall and CPU seconds (all the processes of the run), the
threads a fine-tuning stage used and the commit. A failed row is recorded with its return code, no figures, and
the list stops: the log says why.

A preset's cost is its time from nothing, what a user pays after `git clone`:

    python bench/levers.py --data ../shared/data/statefarm-dev --from-nothing presets/cpu-quality.yaml

clones this commit afresh (no DVC cache, no outputs), lays the preset and then the local data over its params.yaml
with `python -m pipeline.preset`, and times a plain `dvc repro` there: the row `cpu-quality from nothing`, once
per commit (a preset changed at a later commit is timed again).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The resolution ladder first (the order); each later row builds on the best size of the ladder. The rows
# name their backbone, so a row means the same at any commit: the default's fine-tuned net was lite0 up to 9ba63ec,
# then lite1 (row lite1_128 won; the model's key `lite0` became `net`). A row's overrides and commit are in the
# table; "default" is the default of its commit.
SIZE_ROWS = {"default": 128, "ft160": 160, "ft192": 192, "ft224": 224}
LITE0 = "finetune.models.net.backbone=tf_efficientnet_lite0"
LITE1 = "finetune.models.net.backbone=tf_efficientnet_lite1"
CPU_PRESET_EMA = ["finetune.defaults.ema_decay=0.99", "finetune.defaults.ema_half_life=0"]
ROWS: dict[str, list[str]] = {
    "default": [],
    "ft160": [LITE0, "finetune.models.net.image_size=160"],
    "ft192": [LITE0, "finetune.models.net.image_size=192"],
    "ft224": [LITE0, "finetune.models.net.image_size=224"],
    "e8": [LITE0, "finetune.models.net.image_size={size}", "finetune.models.net.epochs=8"],
    "lite1": [LITE1, "finetune.models.net.image_size={size}"],
    "pseudo": [LITE0, "finetune.models.net.image_size={size}", "pseudo.models=[net]",
               "ensemble.models=[heads-tf_efficientnet_lite0,finetune-net,pseudo-net]"],
    "regions": [LITE0, "finetune.models.net.image_size={size}", "+finetune.models.net.regions=[full,head,hands]"],
    "views4": [LITE0, "finetune.models.net.image_size={size}", "finetune.test_views=[full,zoom,left,right]"],
    # A candidate for the default itself (which changes only for a row that wins at <= 1.25x its time): lite1 at the
    # default's 128 px, ~1.2x lite0's fine-tuning where lite1 at 224 px cut nested CV by 0.068. It won: the default.
    "lite1_128": [LITE1],
    # The pseudo-label round again once its students also train on their own fold pseudo-labelled (the CV that
    # scores a fold as the test is scored): does CV now see that the round did not help the unseen drivers?
    "pseudo2": [LITE0, "finetune.models.net.image_size={size}", "pseudo.models=[net]",
                "ensemble.models=[heads-tf_efficientnet_lite0,finetune-net,pseudo-net]"],
    # The combination: the two levers that won on their own (e8, lite1; views4 did not), together.
    "lite1e8": [LITE1, "finetune.models.net.image_size={size}", "finetune.models.net.epochs=8"],
    # Issue 55, at the default's cost. The default itself first, from nothing in a fresh clone: its stage_s column
    # says where its minutes go. Then the levers on the default, each read against it.
    # FixRes (Touvron et al. 2019): the default's net trained at 128 px, predicted larger. Only prediction runs again.
    "fixres144": ["finetune.defaults.test_image_size=144"],
    "fixres160": ["finetune.defaults.test_image_size=160"],
    "fixres192": ["finetune.defaults.test_image_size=192"],
    # The EMA as a half-life (1.5 epochs: what 0.99 a step is at the default's ~44 steps an epoch) with timm's
    # warm-up, as the GPU preset has it, instead of the constant 0.99 from the first step.
    "ema_hl": ["finetune.defaults.ema_decay=0", "finetune.defaults.ema_half_life=1.5"],
    # Mixup / CutMix on the fine-tuned net (timm.data.Mixup; timm's recipes use mixup 0.2 / cutmix 1.0 for short runs).
    "mixup": ["finetune.defaults.mixup_alpha=0.2"],
    "cutmix": ["finetune.defaults.cutmix_alpha=1.0"],
    # Progressive resizing at the default's pixel cost: 96 -> 160 px over the 5 epochs (96, 112, 128, 144, 160: the
    # mean of the squares is 1.03x 128 px's), predicting at 160.
    "prog96_160": ["finetune.models.net.image_size=160", "finetune.defaults.progressive_from=96"],
    # The frozen-feature heads out of the blend (and the neighbours found in the fine-tuned net's embeddings): what
    # the features pass and the heads (~8 % of the default's minutes, row default's stage_s) add to the ensemble.
    "noheads": ["ensemble.models=[finetune-net]", "ensemble.neighbour_features=[finetune-net]"],
    # The minutes the new loop freed (the default from nothing: ~490 s, against the 696 s the 1.25x budget is read
    # from) spent on pixels and epochs: lite1 at 160 px (1.56x the fine-tuning pixels), at 176 px (1.89x), at 192 px
    # (2.25x), and the default's 128 px for 7 epochs (1.4x).
    "lite1_160": ["finetune.models.net.image_size=160"],
    "lite1_176": ["finetune.models.net.image_size=176"],
    "lite1_192": ["finetune.models.net.image_size=192"],
    "lite1_e7": ["finetune.models.net.epochs=7"],
    # Issue 62, the GPU preset chosen on photos. Each net is the CPU preset's recipe (8 epochs, batch 32, lr 2e-3, the
    # EMA at 0.99 a step) unless the row says otherwise. Today's preset as it stands cannot run here: its regions
    # net's batch of 128 frames is 384 crops at 224 px, ~31 GB of activations in float32 (78 MiB a crop, measured).
    # lite2 at its native 260 px (the frame cache at 260 so that the pixels are there).
    "gpu_lite2_260": ["finetune.models.net.backbone=tf_efficientnet_lite2", "finetune.models.net.image_size=260",
                      "finetune.models.net.epochs=8", "frames.size=260", *CPU_PRESET_EMA],
    # The CPU preset's net trained as the GPU preset trains: batch 128, lr 1e-3, one frozen epoch, the EMA as a
    # half-life of 1.5 epochs (0.99 a step would span the whole run at 11 steps an epoch). Read against row
    # `cpu-quality from nothing` (the same net at batch 32, lr 2e-3, 0.99 a step).
    "gpu_lite1_b128": [LITE1, "finetune.models.net.image_size=224", "finetune.models.net.epochs=8",
                       "finetune.defaults.batch_size=128", "finetune.defaults.lr=0.001",
                       "finetune.defaults.freeze_epochs=1"],
    # The CPU preset's net with the 1st-place form beside it on lite1: one net over the frame, the head and the hands.
    # The frame cache at 260 px as in gpu_lite2_260, so that the frozen features, the heads and (in the row after
    # it) lite2's folds are the ones already cached; lite1 at 224 px reads the same frames resized.
    "gpu_lite1_regions": [LITE1, "finetune.models.net.image_size=224", "finetune.models.net.epochs=8", *CPU_PRESET_EMA,
                          "frames.size=260",
                          "+finetune.models.regions3={backbone: tf_efficientnet_lite1, image_size: 224, epochs: 8, "
                          "regions: [full, head, hands]}",
                          "ensemble.models=[heads-tf_efficientnet_lite0,finetune-net,finetune-regions3]",
                          "ensemble.neighbour_features=[tf_efficientnet_lite0,finetune-net,finetune-regions3]"],
    # The two nets together: lite2 at 260 px (row gpu_lite2_260) beside the lite1 [full, head, hands] net (row
    # gpu_lite1_regions). Every fold is one of those rows': only the blend runs.
    "gpu_lite2_regions": ["finetune.models.net.backbone=tf_efficientnet_lite2", "finetune.models.net.image_size=260",
                          "finetune.models.net.epochs=8", "frames.size=260", *CPU_PRESET_EMA,
                          "+finetune.models.regions3={backbone: tf_efficientnet_lite1, image_size: 224, epochs: 8, "
                          "regions: [full, head, hands]}",
                          "ensemble.models=[heads-tf_efficientnet_lite0,finetune-net,finetune-regions3]",
                          "ensemble.neighbour_features=[tf_efficientnet_lite0,finetune-net,finetune-regions3]"],
    # presets/gpu.yaml as a row, a fold a stage so that it resumes across sessions (a `--from-nothing` run does not):
    # gpu_lite1_regions on the preset's 320x240 frame cache (frames.size 224, params.yaml's) and its EMA rule, the
    # half-life of 1.5 epochs from the first step. features.batch_size (256 there) is left out: speed, not numbers.
    "gpu_preset": [LITE1, "finetune.models.net.image_size=224", "finetune.models.net.epochs=8",
                   "finetune.defaults.ema_decay=0", "finetune.defaults.ema_half_life=1.5",
                   "finetune.defaults.ema_warmup=false",
                   "+finetune.models.regions3={backbone: tf_efficientnet_lite1, image_size: 224, epochs: 8, "
                   "regions: [full, head, hands]}",
                   "ensemble.models=[heads-tf_efficientnet_lite0,finetune-net,finetune-regions3]",
                   "ensemble.neighbour_features=[tf_efficientnet_lite0,finetune-net,finetune-regions3]"],
}
FIELDS = ["row", "overrides", "nested_cv", "finetune_cv", "unseen", "unseen_public", "unseen_private",
          "fold_log_loss", "wall_s", "cpu_s", "threads", "cores", "commit", "finished", "returncode", "stage_s"]
STAGE_STARTS = re.compile(r"Running stage '([^']+)'")


def read_table(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    """``row`` at the end of the table; a table written before a column was added is rewritten with it first (its
    rows empty there)."""
    rows = read_table(path)
    if rows and list(rows[0]) != FIELDS:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def best_size(done: list[dict]) -> int | None:
    """The fine-tuning size of the ladder row with the lowest nested CV (the honest figure, not the unseen one)."""
    scored = [(float(r["nested_cv"]), SIZE_ROWS[r["row"]]) for r in done if r["row"] in SIZE_ROWS and r["nested_cv"]]
    return min(scored)[1] if scored else None


def overrides_of(name: str, done: list[dict]) -> list[str]:
    size = best_size(done)
    if any("{size}" in o for o in ROWS[name]) and size is None:
        raise SystemExit(f"row {name}: needs the best fine-tuning size, and no ladder row has a result yet")
    return [o.replace("{size}", str(size)) for o in ROWS[name]]


def metrics(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def timed(cmd: list[str], log_path: Path, cwd: Path | None = None) -> tuple[int, float, float, dict[str, float]]:
    """Run ``cmd`` with its output in ``log_path``, each line stamped with the seconds since the start: return code,
    wall seconds, CPU seconds of all its processes, and the wall seconds of each stage DVC ran (from its
    ``Running stage`` line to the next one or the end: DVC's hashing and caching of a stage's outputs count as the
    stage's)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{datetime.datetime.now():%H:%M}] {log_path.stem}: {' '.join(cmd)}", flush=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    starts: list[tuple[str, float]] = []
    # Unbuffered, or DVC's lines would reach the pipe in bursts and the stamps say when a buffer filled.
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                                                      text=True, errors="replace", env=environment) as process:
        for line in process.stdout:
            elapsed = time.monotonic() - start
            log.write(f"{elapsed:8.1f} {line}")
            log.flush()
            if found := STAGE_STARTS.search(line):
                starts.append((found.group(1), elapsed))
        returncode = process.wait()
    wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    ends = [at for _, at in starts[1:]] + [wall]
    stages = {name: round(end - at) for (name, at), end in zip(starts, ends)}
    return returncode, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), stages


def head_commit(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=root).stdout.strip()


def row_of(name: str, overrides: str, run: tuple[int, float, float, dict[str, float]], root: Path) -> dict:
    """The table's row for a finished run, its figures read from the metrics the run wrote under ``root``; its
    ``stage_s`` is ``stage=seconds`` for every stage the run ran, space-separated."""
    returncode, wall, cpu, stages = run
    row = {"row": name, "overrides": overrides, "wall_s": round(wall), "cpu_s": round(cpu),
           "cores": os.cpu_count(), "commit": head_commit(root), "returncode": returncode,
           "finished": datetime.datetime.now().isoformat(timespec="seconds"),
           "stage_s": " ".join(f"{stage}={seconds}" for stage, seconds in stages.items())}
    if returncode == 0:
        ensemble = metrics(root / "metrics/ensemble/metrics.json")
        submission = metrics(root / "metrics/submission/metrics.json")
        folds = [metrics(root / f"metrics/finetune-net-fold{k}/metrics.json") for k in range(4)]
        row |= {"nested_cv": round(ensemble["cv_log_loss"], 4),
                "finetune_cv": round(ensemble.get("finetune-net/cv_log_loss", float("nan")), 4),
                "unseen": round(submission["leaderboard_log_loss"], 4),
                "unseen_public": round(submission["public_log_loss"], 4),
                "unseen_private": round(submission["private_log_loss"], 4),
                "fold_log_loss": " ".join(f"{f['fold_log_loss']:.3f}" for f in folds if "fold_log_loss" in f),
                "threads": folds[0].get("threads", "")}
    return row


def run_row(name: str, overrides: list[str], data: Path, logs: Path) -> dict:
    subprocess.run(["git", "checkout", "HEAD", "--", "params.yaml"], check=True)
    subprocess.run(["dvc", "exp", "remove", name], capture_output=True)  # a failed earlier try of this row
    cmd = ["dvc", "exp", "run", "-n", name, "-S", "data.source=local", "-S", f"data.local_path={data}"]
    for o in overrides:
        cmd += ["-S", o]
    return row_of(name, " ".join(overrides), timed(cmd, logs / f"{name}.log"), Path.cwd())


def run_from_nothing(preset: Path, data: Path, logs: Path) -> dict:
    """``preset`` from nothing: a fresh clone of this commit, the preset and the local data over its params.yaml,
    `dvc repro` timed (the clone is left in ``logs`` for a look at its outputs, and replaced on the next try)."""
    name = f"{preset.stem} from nothing"
    clone = logs / f"{preset.stem}-from-nothing"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", ".", str(clone)], check=True)
    local = logs / "local-data.yaml"
    local.write_text(f"data:\n  source: local\n  local_path: {json.dumps(str(data))}\n")
    for overlay in (preset.resolve(), local):
        if subprocess.run([sys.executable, "-m", "pipeline.preset", str(overlay)], cwd=clone).returncode:
            sys.exit(f"{overlay}: refused by python -m pipeline.preset (the line above says why)")
    run = timed(["dvc", "repro"], logs / f"{preset.stem}-from-nothing.log", cwd=clone)
    return row_of(name, f"preset {preset}", run, clone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the local copy of the competition")
    parser.add_argument("--table", type=Path, default=Path("docs/levers.csv"))
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated, in order (default: all)")
    parser.add_argument("--logs", type=Path, default=Path("/tmp/levers"))
    parser.add_argument("--from-nothing", type=Path, metavar="PRESET",
                        help="instead of the rows: this preset's row, timed from nothing in a fresh clone")
    args = parser.parse_args()
    if args.from_nothing:
        # Once per preset and commit: the preset changes with the commit, and a new commit is measured again.
        name = f"{args.from_nothing.stem} from nothing"
        commit = head_commit(Path.cwd())
        if any(r["row"] == name and r["commit"] == commit and r["nested_cv"] for r in read_table(args.table)):
            sys.exit(f"{name}: in {args.table} already for {commit}")
        row = run_from_nothing(args.from_nothing, args.data.resolve(), args.logs.resolve())
        append_row(args.table, row)
        print(f"[{datetime.datetime.now():%H:%M}] {name}: {json.dumps(row)}", flush=True)
        sys.exit(0 if row["returncode"] == 0 else f"{name}: dvc repro failed, see {args.logs}")
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"--rows: unknown row {unknown[0]!r} (rows: {', '.join(ROWS)})")
    for name in names:
        done, commit = read_table(args.table), head_commit(Path.cwd())
        if any(r["row"] == name and r["commit"] == commit and r["nested_cv"] for r in done):
            print(f"{name}: in {args.table} already for {commit}", flush=True)
            continue
        row = run_row(name, overrides_of(name, done), args.data.resolve(), args.logs)
        append_row(args.table, row)
        print(f"[{datetime.datetime.now():%H:%M}] {name}: {json.dumps(row)}", flush=True)
        if row["returncode"] != 0:
            sys.exit(f"{name}: dvc exp run failed ({row['returncode']}), see {args.logs / (name + '.log')}")


if __name__ == "__main__":
    main()
