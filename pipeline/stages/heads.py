"""heads stage: a small classifier per driver fold on one backbone's cached features.

BatchNorm -> Linear -> ReLU -> Dropout -> Linear, trained with AdamW, warm-up +
cosine, for a fixed number of epochs: no epoch is chosen on the held-out drivers,
whose predictions become the out-of-fold ones (their log loss per epoch is only
drawn as a curve). Trains on every
cached view and augmented pass of the fold's training images; predicts
held-out and test images averaged over the test-time views, as the submission
will be. Reads params ``dropout``, ``heads``, the folds CSV and the backbone's
features. Writes ``data/predictions/<competition>/heads-<backbone>/fold<k>/``
(``oof.csv``, ``test.csv``, ``head.pt``) and DVCLive metrics and curves under
``metrics/heads-<backbone>/``.

    python -m pipeline.stages.heads tf_efficientnet_lite0
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np
import torch
from dvclive import Live
from sklearn.model_selection import StratifiedKFold
from torch import nn

from pipeline.atomic import atomic_dir
from pipeline.compute.cores import stage_command
from pipeline.compute.devices import pick_device
from pipeline.config import HeadsParams, load_params
from pipeline.data.competitions import competition_of
from pipeline.data.metrics import accuracy, competition_metric, multiclass_log_loss
from pipeline.data.predictions import write_fold
from pipeline.data.tables import load_folds
from pipeline.errors import PipelineError
from pipeline.paths import features_dir, fold_name, metrics_dir, predictions_dir
from pipeline.progress import progress
from pipeline.training.feature_cache import FeatureSet, load_feature_set
from pipeline.training.head_model import make_head, predict
from pipeline.training.schedule import seed_everything, warmup_cosine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadSetup:
    """What every head of one run shares: the number of classes, section heads, the top-level dropout."""

    n_classes: int
    settings: HeadsParams
    dropout: float


def train_head(x: np.ndarray, y: np.ndarray, val_views: np.ndarray, y_val: np.ndarray, setup: HeadSetup, seed: int,
               curve=None) -> nn.Module:
    """Fit one head on ``x`` [n, dim] for ``heads.epochs``; the held-out views only feed ``curve``.

    The whole feature matrix sits on the device (a GPU when there is one): a step is an index into it, and the
    loss is read back once per epoch, so the device never waits for Python between steps."""
    seed_everything(seed)
    settings, device = setup.settings, pick_device()
    head = make_head(x.shape[1], settings.hidden, setup.n_classes, setup.dropout).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(x) // settings.batch_size)
    schedule = warmup_cosine(optimizer, settings.warmup_epochs * steps_per_epoch, settings.epochs * steps_per_epoch)
    inputs, targets = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    for epoch in range(settings.epochs):
        head.train()
        order = torch.randperm(len(x)).to(device)  # drawn on the CPU: the same order on any device
        losses = []
        for start in range(0, len(x), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            loss = nn.functional.cross_entropy(head(inputs[batch]), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
        mean_loss = torch.stack(losses).mean().item()
        if not np.isfinite(mean_loss):
            raise PipelineError(f"heads: the training loss became {mean_loss} in epoch {epoch + 1}; "
                                f"lower heads.lr (or check the cached features)")
        if curve is not None:
            curve(epoch, mean_loss, multiclass_log_loss(y_val, predict(head, val_views)))
    return head.cpu()


def training_rows(features: FeatureSet, rows: np.ndarray) -> np.ndarray:
    """Every cached view and augmented pass of the given train rows, stacked as separate samples."""
    copies = [features.train_views[v][rows] for v in range(len(features.train_views))]
    copies += [features.train_aug[p][rows] for p in range(len(features.train_aug))]
    return np.concatenate(copies).astype(np.float32)


def cross_validate(features: FeatureSet, labels: np.ndarray, fold_of: np.ndarray, setup: HeadSetup,
                   live: Live | None = None, predict_test: bool = True):
    """Per fold: (held-out rows, held-out probabilities, test probabilities (None unless ``predict_test``), head).
    The held-out views are predicted every epoch only for ``live``'s curves."""
    results = []
    copies = len(features.train_views) + len(features.train_aug)
    for fold in progress(np.unique(fold_of), desc=f"heads on {len(features.train_ids)} images", unit="fold"):
        train, held_out = np.nonzero(fold_of != fold)[0], np.nonzero(fold_of == fold)[0]

        def curve(epoch: int, train_loss: float, val_loss: float, fold=fold) -> None:
            live.step = epoch
            live.log_metric(f"fold{fold}/train_loss", train_loss)
            live.log_metric(f"fold{fold}/val_log_loss", val_loss)

        val_views = np.asarray(features.train_views[:, held_out], np.float32)
        head = train_head(training_rows(features, train), np.tile(labels[train], copies), val_views,
                          labels[held_out], setup, setup.settings.seed + int(fold), curve if live is not None else None)
        results.append((held_out, predict(head, val_views),
                        predict(head, features.test_views) if predict_test else None, head))
    return results


def random_split_oof(features: FeatureSet, labels: np.ndarray, n_folds: int, setup: HeadSetup) -> np.ndarray:
    """Out-of-fold probabilities of the same heads on a split that ignores groups: near-duplicate frames of one
    driver leak into validation, which is how much a random split flatters."""
    random_fold = np.zeros(len(labels), int)
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=setup.settings.seed)
    for k, (_, rows) in enumerate(splitter.split(labels, labels)):
        random_fold[rows] = k
    oof = np.zeros((len(labels), setup.n_classes))
    for held_out, proba, _, _ in cross_validate(features, labels, random_fold, setup, predict_test=False):
        oof[held_out] = proba
    return oof


def main_for(backbone: str) -> None:
    params = load_params()
    spec = competition_of(params)
    settings = params.heads
    features = load_feature_set(features_dir(spec.slug, backbone))
    for name in ("train_views", "test_views", "train_aug"):
        if not np.isfinite(getattr(features, name)).all():  # the features stage refuses these; the file was altered
            raise PipelineError(f"{features_dir(spec.slug, backbone) / name}.npy: non-finite features; "
                                f"`dvc repro -f features@{backbone}` rebuilds them")
    folds = load_folds(spec.slug).set_index("img").loc[features.train_ids].reset_index()
    labels = spec.class_indices(folds.label)
    fold_of = folds.fold.to_numpy()
    model_name, key = f"heads-{backbone}", spec.scorer.key
    setup = HeadSetup(len(spec.classes), settings, params.dropout)
    oof = np.zeros((len(labels), len(spec.classes)))
    with atomic_dir(predictions_dir(spec.slug, model_name)) as out, \
            Live(str(metrics_dir(model_name)), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        for held_out, oof_proba, test_proba, head in cross_validate(features, labels, fold_of, setup, live):
            fold = int(fold_of[held_out[0]])
            oof[held_out] = oof_proba
            write_fold(out / fold_name(fold), spec.classes, folds.img[held_out], oof_proba, features.test_ids,
                       test_proba)
            torch.save({"state_dict": head.state_dict(), "backbone": backbone, "dropout": params.dropout,
                        "heads": settings.model_dump(), "classes": list(spec.classes)}, out / fold_name(fold) / "head.pt")
            fold_score = competition_metric(spec, labels[held_out], oof_proba)
            live.summary[f"fold{fold}_{key}"] = fold_score
            log.info("%s fold %d: %s %.4f, accuracy %.3f", model_name, fold, spec.metric, fold_score,
                     accuracy(labels[held_out], oof_proba))
        cv_score = competition_metric(spec, labels, oof)
        live.summary.update({f"cv_{key}": cv_score, "cv_accuracy": accuracy(labels, oof)})
        if settings.random_split_check:
            random_oof = random_split_oof(features, labels, len(np.unique(fold_of)), setup)
            live.summary[f"random_split_cv_{key}"] = competition_metric(spec, labels, random_oof)
            log.info("%s random-split CV %s %.4f (grouped split %.4f)", model_name, spec.metric,
                     live.summary[f"random_split_cv_{key}"], cv_score)
        log.info("%s: CV %s %.4f (%s), accuracy %.3f", model_name, spec.metric, cv_score, spec.scorer.direction,
                 live.summary["cv_accuracy"])


@stage_command
def main() -> None:
    if len(sys.argv) != 2:
        raise PipelineError("usage: python -m pipeline.stages.heads <backbone listed under features.backbones>")
    main_for(sys.argv[1])


if __name__ == "__main__":
    main()
