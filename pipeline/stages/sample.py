"""sample stage: which training and test images this run uses; all of them, or a sample of whole groups.

The fast.ai way with State Farm: prove an idea on a few drivers, then run
everything. ``data.sample`` is the fraction of the training groups to keep
(drivers, pets, people; never part of a group), chosen deterministically from
``data.sample_seed`` so that the kept groups' class mix stays close to the
whole; the same fraction of the test images is kept, in sample-submission
order. Every later stage reads these two tables instead of listing the raw
files, so a sample run costs about that fraction of a full run. ``1`` keeps
everything. Reads params ``competition``, ``data.sample``, ``data.sample_seed``,
``folds.n_splits`` and the raw files. Writes ``data/sample/<competition>/``:
``train.csv`` (img, label, group, member) and ``test.csv`` (img, member).

    python -m pipeline.sample
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline.atomic import atomic_dir
from pipeline.compute.cores import stage_command
from pipeline.config import load_params
from pipeline.data.competitions import competition_of
from pipeline.data.raw_data import every_image
from pipeline.data.tables import RunImages
from pipeline.errors import PipelineError
from pipeline.paths import raw_dir, sample_dir

log = logging.getLogger(__name__)


def keep_groups(train: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Which training rows to keep: ``round(fraction * groups)`` whole groups (at least one) whose class mix is
    close to the whole set's: chosen greedily in a seeded random order, then improved by swapping one kept group
    for one left out while that brings the mix closer. Without groups, a stratified sample of images."""
    if fraction >= 1:
        return np.ones(len(train), bool)
    if (train.group == "").all():
        stratify = train.label.value_counts().min() > 1
        if not stratify:
            log.info("data.sample: class %r has a single image, so the sample is drawn without keeping the class "
                     "mix", train.label.value_counts().idxmin())
        kept = train_test_split(np.arange(len(train)), train_size=max(1, round(fraction * len(train))),
                                stratify=train.label if stratify else None, random_state=seed)[0]
        return np.isin(np.arange(len(train)), kept)
    counts = pd.crosstab(train.group, train.label)
    order = np.random.default_rng(seed).permutation(len(counts))
    names, per_class = counts.index[order], counts.to_numpy()[order].astype(float)
    target = per_class.sum(0) / per_class.sum()

    def distance(totals: np.ndarray) -> np.ndarray:  # L1 distance of each row's class mix from the target
        return np.abs(totals / totals.sum(-1, keepdims=True) - target).sum(-1)

    kept = np.zeros(len(names), bool)
    for _ in range(max(1, round(fraction * len(names)))):
        left = np.nonzero(~kept)[0]
        kept[left[np.argmin(distance(per_class[kept].sum(0) + per_class[left]))]] = True
    for _ in range(len(names)):  # swaps, each strictly better: this ends
        total, inside, outside = per_class[kept].sum(0), np.nonzero(kept)[0], np.nonzero(~kept)[0]
        swapped = total[None, None] - per_class[inside][:, None] + per_class[outside][None, :]
        gains = distance(total) - distance(swapped)
        best = np.unravel_index(np.argmax(gains), gains.shape) if gains.size else None
        if best is None or gains[best] <= 1e-12:
            break
        kept[inside[best[0]]], kept[outside[best[1]]] = False, True
    return train.group.isin(names[kept]).to_numpy()


def keep_test(n_test: int, fraction: float, seed: int) -> np.ndarray:
    """The same fraction of the test images (at least one when there are any), their order kept."""
    if fraction >= 1 or n_test == 0:
        return np.ones(n_test, bool)
    chosen = np.random.default_rng([seed, 1]).choice(n_test, size=max(1, round(fraction * n_test)), replace=False)
    return np.isin(np.arange(n_test), chosen)


def sample_images(every: RunImages, fraction: float, seed: int) -> RunImages:
    """The run's images: ``fraction`` of ``every``'s training groups and of its test images."""
    train, test = every.train, every.test
    return RunImages(every.raw, train[keep_groups(train, fraction, seed)].reset_index(drop=True),
                     test[keep_test(len(test), fraction, seed)].reset_index(drop=True))


@stage_command
def main() -> None:
    params = load_params()
    spec = competition_of(params)
    fraction = params.data.sample
    every = every_image(raw_dir(spec.slug), spec)
    images = sample_images(every, fraction, params.data.sample_seed)
    train, test = images.train, images.test
    groups = train.group[train.group != ""].nunique()
    if fraction < 1 and groups and groups < params.folds.n_splits:
        total = every.train.group.nunique()
        raise PipelineError(f"params.yaml: data.sample: {fraction} keeps {groups} of {total} "
                            f"{spec.group_column or 'group'} groups, fewer than folds.n_splits="
                            f"{params.folds.n_splits}; raise data.sample to at least "
                            f"{params.folds.n_splits / total:.2f} or lower folds.n_splits")
    with atomic_dir(sample_dir(spec.slug)) as out:
        images.write(out)
    if fraction < 1:
        log.info("data.sample=%g: %d train images of %d groups, %d test images", fraction, len(train),
                 train.group.replace("", np.nan).nunique() or len(train), len(test))
    log.info("wrote %s: %d train and %d test images", sample_dir(spec.slug), len(train), len(test))


if __name__ == "__main__":
    main()
