"""Offline ImageNet weights are real, and backbones that need the hub fail with one clear line."""
from __future__ import annotations

import sys

import pytest
import timm
import torch
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.training.backbones import create_backbone, data_config
from tests.conftest import REPO, run

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_offline_lite0_weights_classify_a_photo_of_a_cat_as_a_cat():
    from skimage import data

    model = create_backbone("tf_efficientnet_lite0", num_classes=1000).eval()
    config = data_config(model)
    assert config["mean"] == (0.5, 0.5, 0.5) and config["interpolation"] == "bicubic"
    batch = timm.data.create_transform(**config)(Image.fromarray(data.chelsea()))[None]
    with torch.inference_mode():
        probabilities = model(batch).softmax(-1)[0]
    assert int(probabilities.argmax()) in IMAGENET_CATS
    assert float(probabilities[list(IMAGENET_CATS)].sum()) > 0.5


def test_num_classes_zero_gives_pooled_features():
    model = create_backbone("tf_efficientnet_lite0", num_classes=0).eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)


@pytest.mark.slow
def test_a_hub_only_backbone_offline_names_it_and_the_offline_ones(tmp_path):
    # huggingface_hub reads HF_HUB_OFFLINE at import, so the check runs in a fresh interpreter.
    code = ("from pipeline.training.backbones import create_backbone\n"
            "from pipeline.errors import cli\n"
            "cli(lambda: create_backbone('resnet18'))()\n")
    result = run([sys.executable, "-c", code], REPO, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
                 check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "resnet18: its pretrained weights" in lines[0] and "tf_efficientnet_lite0" in lines[0]


def test_an_unknown_backbone_name_is_refused():
    with pytest.raises(PipelineError, match="timm has no model 'resnet9000'"):
        create_backbone("resnet9000")
