"""Which regions of the frame carry the class? Frozen ImageNet features of each region, scored by driver-split CV.

Reads what `dvc repro` wrote for the competition in params.yaml (the frame cache and the folds table: the stand-in,
the real development set, any data), extracts a frozen backbone's pooled features of every training frame cut to
each region of pipeline/views/augment.py's REGIONS (resized to --size), and fits a logistic regression per fold on the
other folds' drivers. Prints, per region, the out-of-fold log loss of that region alone and of the whole frame's
features beside it (what a multi-region net could add to the whole frame), and the same for the pairs of the
best regions. Cheap where fine-tuning is not: one forward pass per region, minutes on 2 cores for 3,000 frames,
so it chooses the regions a crop model or a multi-region net is worth training on.

    dvc repro frames folds && python bench/regions.py [--size 128] [--regions full head hands]
    python bench/regions.py --draw docs/regions.jpg     # the regions drawn on a training frame (--frame N)
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from pipeline.compute.devices import pick_device
from pipeline.config import load_params
from pipeline.data.competitions import load_spec
from pipeline.data.frames import load_frames
from pipeline.data.tables import load_folds
from pipeline.errors import cli
from pipeline.paths import frames_dir
from pipeline.training.backbones import create_backbone, data_config
from pipeline.training.extraction import extract
from pipeline.views.augment import REGIONS, region_box, view_transform
from pipeline.views.image_data import Feed, FrameImages

COLOURS = [(255, 255, 255), (255, 80, 80), (80, 220, 80), (80, 160, 255), (255, 220, 60), (220, 90, 255),
           (60, 230, 230), (255, 150, 40)]


def draw_regions(frame: np.ndarray, regions: list[str], scale: int = 2) -> np.ndarray:
    """An RGB frame, enlarged ``scale`` times, with each region's box and name drawn on it."""
    height, width = frame.shape[:2]
    canvas = cv2.resize(frame, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC)
    for i, region in enumerate(regions):
        top, bottom, left, right = (v * scale for v in region_box(region, height, width))
        inset = 2 * (i % 3)  # boxes that share an edge stay apart
        cv2.rectangle(canvas, (left + inset, top + inset), (right - 1 - inset, bottom - 1 - inset), COLOURS[i % 8], 2)
        cv2.putText(canvas, region, (left + 6 + inset, top + 18 + 16 * (i % 2) + inset), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, COLOURS[i % 8], 1, cv2.LINE_AA)
    return canvas


def region_features(model: torch.nn.Module, feed: Feed, frames, rows: np.ndarray, region: str,
                    size: int) -> np.ndarray:
    interpolation = data_config(model)["interpolation"]
    images = FrameImages(frames.both, rows, view_transform("full", size, interpolation), size, regions=[region])
    out = np.zeros((len(rows), model.num_features), np.float16)
    speed = extract(model, images, out, feed, f"region {region}", [str(r) for r in rows])
    print(f"  {region}: {speed:.0f} img/s", flush=True)
    return out.astype(np.float32)


# Strong L2 on standardised features: a weakly regularised fit on ~2,000 frames of 15 drivers is over-confident on
# unseen drivers (worse than chance), and its log loss would rank regions by over-confidence instead.
C = 0.002


def oof_log_loss(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, classes: int) -> float:
    """Out-of-fold log loss of a standardised logistic regression, each fold fitted on the others."""
    proba = np.zeros((len(labels), classes))
    for fold in np.unique(folds):
        train, held = folds != fold, folds == fold
        scaler = StandardScaler().fit(features[train])
        fit = LogisticRegression(C=C, max_iter=500).fit(scaler.transform(features[train]), labels[train])
        proba[np.ix_(held, fit.classes_)] = fit.predict_proba(scaler.transform(features[held]))
    proba = np.clip(proba, 1e-6, 1)
    return log_loss(labels, proba / proba.sum(1, keepdims=True), labels=list(range(classes)))


@cli  # one line for bad input; shares the cores with stages running beside it (pipeline/compute/cores.py)
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", nargs="+", default=list(REGIONS), choices=list(REGIONS))
    parser.add_argument("--size", type=int, default=128, help="each region resized to this (the fine-tuned size)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--draw", help="write the regions drawn on a training frame to this PNG and stop")
    parser.add_argument("--frame", type=int, default=0, help="which training frame --draw uses")
    parser.add_argument("--cache", help="an .npz to keep each region's features in: a second run only refits")
    args = parser.parse_args()
    spec = load_spec(load_params().competition)
    frames = load_frames(frames_dir(spec.slug))
    if args.draw:
        cv2.imwrite(args.draw, draw_regions(np.asarray(frames.arrays["train"][args.frame]), args.regions, 4 if frames.meta["width"] < 200 else 2)[..., ::-1])
        print(f"wrote {args.draw}: {', '.join(args.regions)} on training frame {args.frame}")
        return
    folds = load_folds(spec.slug)
    rows, labels = frames.rows("train", folds.img), spec.class_indices(folds.label)
    device = pick_device()
    model = create_backbone(args.backbone).to(device).eval()
    config = data_config(model)
    feed = Feed.on(device, 32, "auto", config["mean"], config["std"], True)
    print(f"{len(rows)} training frames of {spec.slug}, {args.backbone} at {args.size} px per region")
    cached = dict(np.load(args.cache)) if args.cache and Path(args.cache).is_file() else {}
    features = {region: cached[region] if region in cached else region_features(model, feed, frames, rows, region,
                                                                                 args.size)
                for region in args.regions}
    if args.cache:
        np.savez(args.cache, **{**cached, **features})
    fold_of = folds.fold.to_numpy()

    def score(*regions: str) -> float:
        return oof_log_loss(np.hstack([features[r] for r in regions]), labels, fold_of, len(spec.classes))

    alone = {region: score(region) for region in args.regions}
    beside = {region: score("full", region) for region in args.regions if region != "full" and "full" in features}
    print(f"\n{'region':<14} {'alone':>8} {'with full':>10}   (driver-split CV log loss, lower is better)")
    for region in sorted(args.regions, key=lambda r: beside.get(r, alone[r])):
        print(f"{region:<14} {alone[region]:8.4f} {beside.get(region, float('nan')):10.4f}")
    best = sorted(beside, key=beside.get)[:3]
    for pair in itertools.combinations(best, 2):
        print(f"full + {' + '.join(pair):<20} {score('full', *pair):.4f}")


if __name__ == "__main__":
    main()
