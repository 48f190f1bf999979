"""How hard is the stand-in? A frozen-feature head on unseen drivers, against a random split.

Extracts pooled tf_efficientnet_lite0 features (offline ImageNet weights, 224 px)
for the competition in data/raw/<competition>/ (run `dvc repro download` first),
fits a logistic-regression head and prints multi-class log loss and accuracy for:
driver-grouped CV (the folds stage's split), a random stratified split (which
leaks near-duplicate frames of the same driver), and the hidden test drivers.

    python bench/standin_difficulty.py
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import timm
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.backbones import create_backbone, data_config
from pipeline.competitions import get_spec
from pipeline.config import load_params
from pipeline.images import ImageArchive
from pipeline.paths import raw_dir


def features(archive: ImageArchive, members: list[str], model: torch.nn.Module, size: int) -> np.ndarray:
    transform = timm.data.create_transform(**{**data_config(model), "crop_pct": 1.0, "input_size": (3, size, size)})
    out = []
    with torch.inference_mode():
        for start in range(0, len(members), 32):
            batch = [transform(Image.fromarray(archive.load_rgb(m, draft_size=(size, size))))
                     for m in members[start:start + 32]]
            out.append(model(torch.stack(batch).contiguous(memory_format=torch.channels_last)).numpy())
    return np.concatenate(out)


def main() -> None:
    params = load_params()
    spec = get_spec(params.competition)
    raw = raw_dir(spec.slug)
    labels = pd.read_csv(raw / spec.labels_csv).sort_values(spec.id_column, ignore_index=True)
    solution = pd.read_csv(raw / spec.solution_csv)
    archive = ImageArchive(raw / spec.image_archive)
    model = create_backbone("tf_efficientnet_lite0").eval().to(memory_format=torch.channels_last)
    start = time.perf_counter()
    x_train = features(archive, [f"{spec.train_prefix}{c}/{i}" for c, i in zip(labels.classname, labels.img)], model, 224)
    x_test = features(archive, [f"{spec.test_prefix}{i}" for i in solution.img], model, 224)
    n = len(x_train) + len(x_test)
    print(f"features: {n} images in {time.perf_counter() - start:.0f} s ({n / (time.perf_counter() - start):.1f} img/s)")

    y, groups = labels.classname.to_numpy(), labels.subject.to_numpy()
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    splits = {
        "driver-grouped CV": StratifiedGroupKFold(params.folds.n_splits, shuffle=True, random_state=params.folds.seed),
        "random split CV": StratifiedKFold(params.folds.n_splits, shuffle=True, random_state=params.folds.seed),
    }
    print(f"{'split':22s} {'log loss':>9s} {'accuracy':>9s}")
    for label, splitter in splits.items():
        proba = cross_val_predict(head, x_train, y, groups=groups if "grouped" in label else None, cv=splitter,
                                  method="predict_proba")
        print(f"{label:22s} {log_loss(y, proba, labels=spec.classes):9.3f} {accuracy_score(y, np.array(spec.classes)[proba.argmax(1)]):9.3f}")
    proba = head.fit(x_train, y).predict_proba(x_test)
    y_test = solution.classname.to_numpy()
    print(f"{'unseen test drivers':22s} {log_loss(y_test, proba, labels=spec.classes):9.3f} "
          f"{accuracy_score(y_test, np.array(spec.classes)[proba.argmax(1)]):9.3f}")
    print(f"uniform guess log loss: {np.log(len(spec.classes)):.3f}")


if __name__ == "__main__":
    main()
