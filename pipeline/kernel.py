"""The trained run as the notebook Kaggle runs offline for a code competition, and the loop that enters it: build,
upload, run, submit, score.

Most image competitions of the last years take only a notebook that runs on Kaggle's machines without internet:
``kaggle competitions submit -f file.csv`` cannot enter them. ``build`` writes ``kernel/``:

- ``kernel/dataset/``: the run as a bundle (pipeline/kaggle/inference.py: its params, ensemble recipe, heads, fine-tuned
  folds, the frozen backbones' weights) and the pipeline's own wheel, with ``dataset-metadata.json``. Nothing else
  is shipped: the notebook's inference imports only what Kaggle's image carries (torch, timm, albumentations,
  OpenCV, NumPy, pandas, scikit-learn, SciPy, pydantic, PyYAML, psutil, tqdm), tested in tests/test_dvc_pipeline.py;
- ``kernel/notebook/``: the script Kaggle runs (it installs the wheel from the dataset with pip's ``--no-index``,
  reads ``/kaggle/input/<competition>`` and writes ``/kaggle/working/submission.csv``) and ``kernel-metadata.json``
  (``competition_sources``, ``dataset_sources``, ``enable_internet: false``, the GPU on when the run trained on one).

``push`` builds, uploads the dataset (a new one, or a new version), pushes the notebook, waits for Kaggle to run
it, submits that version's ``submission.csv`` (``kaggle competitions submit <c> -k <owner/slug> -v <version>``),
waits for the score of that submission and records it with the experiment, as ``python -m pipeline.submit`` does.

    python -m pipeline.kernel build [--owner NAME]
    python -m pipeline.kernel push [--owner NAME] [--message "..."] [--wait 3600] [--poll 30]

``train`` trains on Kaggle's free GPUs instead of here, in three verbs as the Slurm executor has them
(pipeline/kaggle/send.py, notebook.py, collect.py; docs/kernel.md): ``send`` uploads the commit and pushes a notebook that runs the stages
up to the fine-tuned nets on a T4; ``status`` asks Kaggle how it goes; ``collect`` downloads its output, checks that
every dependency hashes as in this workspace and imports it as a DVC experiment (``dvc exp show`` lists it).

    python -m pipeline.kernel train send [-S key=value ...] [--preset presets/gpu.yaml] [--packages wheels|index]
        [--accelerator NvidiaTeslaT4] [--name RUN] [--owner NAME] [--wait] [--resume RUN] [--dry-run] [--force]
    python -m pipeline.kernel train status [RUN]
    python -m pipeline.kernel train collect [RUN] [--partial]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.errors import cli
from pipeline.kaggle import collect
from pipeline.kaggle.kernels import build, owner_name, push
from pipeline.kaggle.send import send
from pipeline.kaggle.train_run import RUNS, TrainRun, latest_run


def train(args: argparse.Namespace) -> None:
    if args.verb == "send":
        plan = send(owner_name(args.owner), args.overrides, args.preset, args.packages, args.accelerator, args.name,
                    args.poll, args.wait, resume=args.resume, dry_run=args.dry_run, find_links=args.find_links,
                    force=args.force)
        if not args.wait_for_run or args.dry_run:
            return
        folder = RUNS / plan.run
        while collect.status(plan) in ("queued", "running", "new_script"):
            time.sleep(args.poll)
        collect.collect(plan, folder)  # says why in one line when the session did not complete
        return
    folder = latest_run(args.run)
    plan = TrainRun.load(folder)
    if args.verb == "status":
        collect.status(plan)
    else:
        collect.collect(plan, folder, partial=args.partial)


@cli  # it waits on Kaggle; building the bundle is a few copies
def main() -> None:
    parser = argparse.ArgumentParser(description="The run as a Kaggle notebook: a code competition's submission, "
                                                 "or training on Kaggle's GPUs")
    actions = parser.add_subparsers(dest="action", required=True)
    for action in ("build", "push"):
        sub = actions.add_parser(action, help="the run as a code competition's notebook" if action == "build" else
                                 "build, upload, run on Kaggle, submit that version, record the score")
        sub.add_argument("--owner", help="the Kaggle account (default: the credentials' user name)")
        if action == "push":
            sub.add_argument("--message", "-m", help="the submission's description (default: commit, experiment, CV)")
            sub.add_argument("--wait", type=float, default=3600, help="seconds to wait for each of Kaggle's steps")
            sub.add_argument("--poll", type=float, default=30, help="seconds between two looks")
    verbs = actions.add_parser("train", help="train on Kaggle's GPUs").add_subparsers(dest="verb", required=True)
    sending = verbs.add_parser("send", help="upload the commit and start the training notebook")
    sending.add_argument("-S", "--set-param", action="append", default=[], dest="overrides",
                         help="a param for this run, as `dvc exp run -S` takes it (one value; repeat for more)")
    sending.add_argument("--preset", type=Path, help="a preset laid over params.yaml first, e.g. presets/gpu.yaml")
    sending.add_argument("--packages", choices=["wheels", "index"], default="wheels",
                         help="wheels: the packages Kaggle's image lacks go up with the dataset (the notebook runs "
                              "offline); index: the notebook installs them from PyPI (its internet on)")
    sending.add_argument("--accelerator", default="NvidiaTeslaT4", help="Kaggle's machine shape")
    sending.add_argument("--name", help="the run's and experiment's name (default: k<commit>-<date>-<time>)")
    sending.add_argument("--owner", help="the Kaggle account (default: the credentials' user name)")
    sending.add_argument("--wait", dest="wait_for_run", action="store_true",
                         help="wait for the notebook, then collect")
    sending.add_argument("--poll", type=float, default=60, help="seconds between two looks")
    sending.add_argument("--upload-wait", dest="wait", type=float, default=3600,
                         help="seconds to wait for Kaggle to ready the dataset")
    sending.add_argument("--resume", metavar="RUN", help="start from the stages RUN's session finished (its "
                                                          "preset and values; `collect --partial RUN` shows them)")
    sending.add_argument("--dry-run", action="store_true", help="check and print the plan; send nothing")
    sending.add_argument("--force", action="store_true",
                         help="send a run estimated past a Kaggle session's 12 hours on one T4")
    sending.add_argument("--find-links", type=Path, metavar="DIR",
                         help="take the wheels from this folder only (an offline wheelhouse), not from PyPI")
    for verb in ("status", "collect"):
        sub = verbs.add_parser(verb)
        sub.add_argument("run", nargs="?", help="default: the run sent last")
        if verb == "collect":
            sub.add_argument("--partial", action="store_true",
                             help="a session that ended early: import the stages it finished, train nothing here")
    args = parser.parse_args()
    if args.action == "build":
        build(owner_name(args.owner))
    elif args.action == "push":
        push(owner_name(args.owner), args.message, args.wait, args.poll)
    else:
        train(args)


if __name__ == "__main__":
    main()
