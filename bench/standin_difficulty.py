"""How hard is the stand-in? A frozen-feature head on unseen drivers, against a random split.

Reads the features stage's cached tf_efficientnet_lite0 features (offline ImageNet
weights, full view; run `dvc repro features` first),
fits a logistic-regression head and prints multi-class log loss and accuracy for:
driver-grouped CV (the folds stage's split), a random stratified split (which
leaks near-duplicate frames of the same driver), and the hidden test drivers.

    python bench/standin_difficulty.py
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.config import load_params
from pipeline.feature_cache import load_feature_set
from pipeline.paths import features_dir, raw_dir
from pipeline.competitions import load_spec
from pipeline.raw_data import train_table


def main() -> None:
    params = load_params()
    spec = load_spec(params.competition)
    raw = raw_dir(spec.slug)
    labels = train_table(raw, spec)
    solution = pd.read_csv(raw / spec.solution_csv, dtype=str)
    cached = load_feature_set(features_dir(spec.slug, "tf_efficientnet_lite0"))
    train_rows = pd.Series(range(len(cached.train_ids)), index=cached.train_ids).loc[labels.img].to_numpy()
    test_rows = pd.Series(range(len(cached.test_ids)), index=cached.test_ids).loc[solution[spec.submission_id]].to_numpy()
    x_train = np.asarray(cached.train_views[0], np.float32)[train_rows]
    x_test = np.asarray(cached.test_views[0], np.float32)[test_rows]

    y, groups = labels.label.to_numpy(), labels.group.to_numpy()
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
    y_test = solution[spec.label_column].to_numpy()
    print(f"{'unseen test drivers':22s} {log_loss(y_test, proba, labels=spec.classes):9.3f} "
          f"{accuracy_score(y_test, np.array(spec.classes)[proba.argmax(1)]):9.3f}")
    print(f"uniform guess log loss: {np.log(len(spec.classes)):.3f}")


if __name__ == "__main__":
    main()
