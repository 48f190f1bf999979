"""Does the data in this workspace point the way real State Farm photos do? The table of the stand-in issue.

Reads what `dvc repro` wrote for the competition in params.yaml (the stand-in, the real development set,
any data): the frozen-feature heads' driver-split and random-split CV, each fine-tuned model's CV, the
ensemble's neighbour weight and what smoothing did to its CV, and the ensemble's CV against the
local private leaderboard. Prints one row each, with the ratio the row is about, beside what held-out
real State Farm photos gave (docs/standins.md).

    dvc repro && python bench/standin_difficulty.py
"""
from __future__ import annotations

import json

from pipeline.config import load_params
from pipeline.data.competitions import load_spec
from pipeline.paths import ensemble_dir, metrics_dir

# Held-out real State Farm photos (640x480, 20 train / 6 test drivers), default params: the direction to match.
REAL = {"random": "9x too optimistic", "finetune": "38 % better", "smoothing": "weight 0.6, CV -10 %",
        "ratio": "1.19"}


def _metrics(stage: str) -> dict:
    path = metrics_dir(stage) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    params = load_params()
    spec = load_spec(params.competition)
    backbone = next(iter(params.features.backbones))
    heads, ensemble, submission = _metrics(f"heads-{backbone}"), _metrics("ensemble"), _metrics("submission")
    if not heads or not ensemble:
        raise SystemExit("run `dvc repro` first: no heads or ensemble metrics in metrics/")
    blend = json.loads((ensemble_dir(spec.slug) / "blend.json").read_text())
    frozen, random_split = heads["cv_log_loss"], heads.get("random_split_cv_log_loss")
    rows = [("frozen features + head, driver-split CV", f"{frozen:.3f}", "")]
    if random_split:
        rows.append(("same head, random split", f"{random_split:.3f}: {frozen / random_split:.1f}x too optimistic",
                     REAL["random"]))
    for model in params.ensemble.models:
        if model.startswith(("finetune-", "pseudo-")):
            cv = ensemble[f"{model}/cv_log_loss"]
            better = (frozen - cv) / frozen
            rows.append((f"{model}, CV", f"{cv:.3f}: {abs(better):.0%} {'better' if better > 0 else 'worse'} "
                                         f"than frozen", REAL["finetune"]))
    if "neighbours/cv_log_loss" in ensemble:
        before, after = ensemble["calibrated/cv_log_loss"], ensemble["neighbours/cv_log_loss"]
        rows.append((f"neighbour smoothing ({blend.get('neighbour_features', backbone)})",
                     f"weight {blend['neighbour_weight']:.1f}, k {blend['neighbours']}, CV {after / before - 1:+.0%}",
                     REAL["smoothing"]))
    if "private_log_loss" in submission:
        rows.append(("ensemble CV vs unseen drivers' log loss", f"{ensemble['cv_log_loss']:.3f} vs "
                     f"{submission['private_log_loss']:.3f} (ratio {ensemble['cv_log_loss'] / submission['private_log_loss']:.2f})",
                     REAL["ratio"]))
    width = max(len(r[0]) for r in rows)
    print(f"{spec.slug}, data.source={params.data.source}")
    print(f"{'':{width}}  {'this workspace':44s}  real photos")
    for label, value, real in rows:
        print(f"{label:{width}}  {value:44s}  {real}")


if __name__ == "__main__":
    main()
