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
"""
from __future__ import annotations

import argparse

from pipeline.errors import cli
from pipeline.kaggle.kernels import build, owner_name, push




@cli  # it waits on Kaggle; building the bundle is a few copies
def main() -> None:
    parser = argparse.ArgumentParser(description="The run as a Kaggle notebook for a code competition")
    parser.add_argument("action", choices=["build", "push"])
    parser.add_argument("--owner", help="the Kaggle account (default: the credentials' user name)")
    parser.add_argument("--message", "-m", help="the submission's description (default: commit, experiment, CV)")
    parser.add_argument("--wait", type=float, default=3600, help="seconds to wait for each of Kaggle's steps")
    parser.add_argument("--poll", type=float, default=30, help="seconds between two looks")
    args = parser.parse_args()
    if args.action == "build":
        build(owner_name(args.owner))
    else:
        push(owner_name(args.owner), args.message, args.wait, args.poll)


if __name__ == "__main__":
    main()
