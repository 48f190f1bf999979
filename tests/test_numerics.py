"""NaN or inf is stopped by the stage that made it (features, heads, finetune), never by the submission."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from pipeline.config import load_params
from pipeline.data.frames import load_frames
from pipeline.data.predictions import write_fold
from pipeline.errors import PipelineError
from pipeline.paths import features_dir, frames_dir, predictions_dir
from pipeline.stages import features as features_stage
from pipeline.training.trainer import Trainer
from pipeline.views.augment import view_transform
from pipeline.views.image_data import FrameImages
from pipeline.views.image_data import Feed
from tests.conftest import make_repo, put_competition, run

SLUG = "state-farm-distracted-driver-detection"
BACKBONE = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def featured_repo(tmp_path_factory, tiny_competition) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("numerics") / "repo")
    put_competition(repo, tiny_competition)
    for stage in (["folds"], ["features", BACKBONE]):
        run([sys.executable, "-m", f"pipeline.stages.{stage[0]}", *stage[1:]], repo)
    return repo


class _Overflowing(torch.nn.Module):
    """A backbone whose pooled features overflow float16 for one image, as a badly scaled net's can."""

    num_features = 8
    pretrained_cfg = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "input_size": (3, 32, 32)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = images.mean((2, 3)).repeat(1, 3)[:, :8]
        out[0, 0] = 1e6  # past float16's 65504
        return out


def test_features_that_overflow_float16_stop_the_features_stage_naming_the_image(featured_repo, tmp_path,
                                                                                 monkeypatch, capsys):
    repo = tmp_path / "repo"
    __import__("shutil").copytree(featured_repo, repo, symlinks=True)
    __import__("shutil").rmtree(repo / features_dir(SLUG, BACKBONE))
    monkeypatch.chdir(repo)
    monkeypatch.setattr(features_stage, "create_backbone", lambda *args, **kwargs: _Overflowing())
    monkeypatch.setattr(sys, "argv", ["features", BACKBONE])
    with pytest.raises(SystemExit) as exit_:
        features_stage.main()
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: data/raw/{SLUG}/imgs.zip:train/")
    assert error[0].endswith("non-finite features")
    assert not (repo / features_dir(SLUG, BACKBONE)).exists()


def test_the_heads_stage_refuses_non_finite_cached_features_and_writes_no_predictions(featured_repo, tmp_path):
    repo = tmp_path / "repo"
    __import__("shutil").copytree(featured_repo, repo, symlinks=True)
    views = np.load(repo / features_dir(SLUG, BACKBONE) / "train_views.npy", mmap_mode="r+")
    views[0, 3, 7] = np.nan
    views.flush()
    result = run([sys.executable, "-m", "pipeline.stages.heads", BACKBONE], repo, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (f"error: {features_dir(SLUG, BACKBONE)}/train_views.npy: non-finite features; "
                        f"`dvc repro -f features@{BACKBONE}` rebuilds them")
    assert not (repo / predictions_dir(SLUG, f"heads-{BACKBONE}")).exists()


def test_a_diverging_fine_tune_stops_at_the_end_of_the_epoch_whose_loss_is_not_finite(featured_repo):
    params = load_params(featured_repo / "params.yaml")
    frames = load_frames(featured_repo / frames_dir(SLUG))
    dataset = FrameImages(frames.both, np.arange(8), view_transform("full", 32), 32)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    with torch.no_grad():
        model.get_classifier().bias[0] = float("nan")  # what an exploding learning rate leaves behind
    feed = Feed(torch.device("cpu"), 4, 0, (0.5,) * 3, (0.5,) * 3, precision=None)
    trainer = Trainer(model, params.finetune.recipe("net"), feed, steps_per_epoch=2)
    # Read once an epoch, not once a step (a read a step makes the host wait for the device each time)
    with pytest.raises(PipelineError, match=r"fold 0 epoch 1: the training loss became non-finite \(nan on average "
                                            r"over the epoch's 8 images\); lower the learning rate"):
        trainer.train_epoch(feed.loader(dataset), torch.zeros(8, dtype=torch.int64), "fold 0 epoch 1")


def test_non_finite_probabilities_are_refused_where_they_are_written(tmp_path):
    proba = np.full((2, 10), 0.1)
    proba[1, 4] = np.inf
    with pytest.raises(PipelineError, match="oof.csv: non-finite probabilities; not written"):
        write_fold(tmp_path / "fold0", tuple(f"c{i}" for i in range(10)), ["a", "b"], proba, ["t"], proba[:1])
    assert not (tmp_path / "fold0" / "oof.csv").exists()
