"""params.yaml -> one frozen, typed config object.

Every stage calls ``load_params()`` and reads only its own section. Unknown keys,
wrong types and out-of-range values stop the stage with one line naming the key,
e.g. ``error: params.yaml: folds.n_splits: Input should be greater than or equal to 2 (got 1)``.
"""
from __future__ import annotations

import atexit
import difflib
import functools
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
# A folder: every load_params() of this process notes which keys the stage reads (tests/test_dvc_pipeline.py
# compares them with the stage's `params:` in dvc.yaml).
RECORD_READS = "PIPELINE_RECORD_PARAM_READS"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(Section):
    """Where the competition's files come from (download stage)."""

    source: Literal["standin", "kaggle", "local"]
    # For source=local: the competition's zip as Kaggle serves it, or a folder of its files.
    local_path: str
    # Refuse archives that would expand past this many bytes (zip-bomb guard).
    max_unpacked_bytes: int = Field(gt=0)
    # Optional, for competitions without groups of their own (Dogs vs. Cats, own data): a CSV with
    # columns img and group_column; folds never split a group (pipeline/data/raw_data.py: copy_groups).
    groups_csv: str
    group_column: str
    # A sample run (pipeline/stages/sample.py): this fraction of the training groups and of the test images; 1 = all.
    sample: float = Field(gt=0.0, le=1.0, strict=False)
    sample_seed: int = Field(ge=0)


class OwnDataParams(Section):
    """competition: own-data with data.source: local (pipeline/data/own_data.py)."""

    train_dir: str  # <train_dir>/<class>/*.jpg, a folder per class
    test_dir: str  # optional: unlabeled *.jpg to predict; "" = CV only, no submission


class StandinParams(Section):
    """Size of the synthetic stand-in competition; the default keeps `dvc repro` short on 2 CPU cores."""

    seed: int = Field(ge=0)
    train_drivers: int = Field(ge=2, le=500)
    test_drivers: int = Field(ge=1, le=500)
    frames_per_class: int = Field(ge=1, le=10_000)
    width: int = Field(ge=32, le=4096)
    height: int = Field(ge=24, le=4096)
    jpeg_quality: int = Field(ge=10, le=100)
    public_fraction: float = Field(gt=0.0, lt=1.0, strict=False)


class FoldsParams(Section):
    n_splits: int = Field(ge=2)
    seed: int = Field(ge=0)
    # given: the competition's groups or data.groups_csv, else plain stratified folds; near_duplicates: cluster
    # near-identical images (cached features of near_duplicate_backbone) into groups (folds.py); auto: given
    # groups where there are some, near-duplicate groups where there are none.
    group_by: Literal["auto", "given", "near_duplicates"]
    near_duplicate_backbone: str
    near_duplicate_distance: float = Field(gt=0.0, lt=2.0, strict=False)  # cosine distance, average linkage


# YAML has no float type for `1`, so floats accept ints; a pair is a [low, high] list.
Fraction = Annotated[float, Field(ge=0.0, le=1.0, strict=False)]


def _ordered(pair: list[float]) -> list[float]:
    if pair[0] > pair[1]:
        raise ValueError(f"expected [low, high], got {pair}")
    return pair


Range = Annotated[list[Annotated[float, Field(gt=0.0, strict=False)]], Field(min_length=2, max_length=2),
                  AfterValidator(_ordered)]


class AugmentParams(Section):
    """Train-time augmentation (pipeline/views/augment.py), shared by augmented feature passes and fine-tuning."""

    rotate_degrees: float = Field(ge=0.0, le=45.0, strict=False)
    translate: Fraction  # of the frame's width and height
    scale: Range
    crop_scale: Range  # RandomResizedCrop's share of the frame's area
    crop_ratio: Range  # and its width/height (State Farm frames are 4:3)
    brightness: Fraction
    contrast: Fraction
    saturation: Fraction
    hue: Annotated[float, Field(ge=0.0, le=0.5, strict=False)]
    dropout_holes: int = Field(ge=0, le=32)  # CoarseDropout, 0 turns it off
    # Largest hole side, as a fraction of the image side; holes are 0.05 to this, so it is at least 0.05.
    dropout_size: float = Field(ge=0.05, le=1.0, strict=False)
    # auto: on where the competition's description says flip_safe (its classes survive a mirror; not State Farm's),
    # and then the fine-tuned nets also predict a mirrored test-time view; true on a competition that is not
    # flip-safe is refused.
    hflip: Literal["auto"] | bool


class BackboneParams(Section):
    image_size: int = Field(ge=32, le=1024)


View = Literal["full", "zoom", "left", "right", "up", "down", "hflip"]  # pipeline/views/augment.py's CROPS
Region = Literal["full", "driver", "head", "hands", "wheel", "lap", "console", "bottom_right"]  # augment.py's REGIONS


class FramesParams(Section):
    """The frame cache (pipeline/stages/frames.py): every image decoded once, at reduced size."""

    # The largest image_size any backbone or model may ask for: frames are decoded at the largest libjpeg
    # reduction that keeps both sides at least this (State Farm's 640x480 at 224: 320x240).
    size: int = Field(ge=32, le=4096)
    workers: Literal["auto"] | Annotated[int, Field(ge=1, le=256)]  # decoding processes; auto: every core


class FeaturesParams(Section):
    """Cached pooled features of pretrained backbones (pipeline/stages/features.py)."""

    backbones: dict[str, BackboneParams] = Field(min_length=1)  # timm names
    test_views: list[View] = Field(min_length=1)
    train_passes: int = Field(ge=0, le=100)  # augmented passes over the train images, besides the views
    seed: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    # DataLoader processes decoding JPEGs; auto: none on CPU (they would steal the model's cores), all but one on CUDA
    workers: Literal["auto"] | Annotated[int, Field(ge=0)]
    amp: bool  # bf16/fp16 autocast on CUDA; CPU always runs float32
    # Where test-time views are cropped and resized from the cached frames: cpu (albumentations), device (the
    # model's GPU, pipeline/views/device_views.py), auto (device on CUDA, else cpu)
    views_on: Literal["auto", "cpu", "device"]


class HeadsParams(Section):
    """Small classifiers on cached features (pipeline/stages/heads.py); dropout is the top-level key."""

    hidden: int = Field(ge=8, le=8192)
    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=8)
    lr: float = Field(gt=0.0, le=1.0, strict=False)
    weight_decay: float = Field(ge=0.0, le=1.0, strict=False)
    warmup_epochs: int = Field(ge=0)
    seed: int = Field(ge=0)
    random_split_check: bool  # also fit on a random, non-driver split to show how much it flatters


class Recipe(Section):
    """One fine-tuned model (pipeline/training/fold_training.py): ``finetune.defaults`` overlaid with its
    ``finetune.models.<name>``."""

    backbone: str  # timm name; offline weights for tf_efficientnet_lite0..2
    image_size: int = Field(ge=32, le=1024)  # of each region
    # The size each region is predicted at ("FixRes", Touvron et al. 2019): a random-resized crop shows objects
    # larger than a whole-frame view at the same size does, so a net may predict better a little larger than it
    # trained. 0: image_size. Only prediction changes: a finished run re-predicts without training again.
    test_image_size: int = Field(ge=0, le=1024)
    # What the net looks at (pipeline/views/augment.py's REGIONS), each region resized to image_size: [full] the whole
    # frame; one region, a crop model; several, one net that runs its backbone on each and classifies their
    # pooled features side by side (pipeline/training/backbones.py's RegionNet, the 1st-place form).
    regions: list[Region] = Field(min_length=1, max_length=8)
    epochs: int = Field(ge=1, le=500)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0.0, le=1.0, strict=False)  # the new head's; the body gets lr * body_lr_factor
    body_lr_factor: float = Field(ge=0.0, le=1.0, strict=False)
    weight_decay: float = Field(ge=0.0, le=1.0, strict=False)
    warmup_epochs: float = Field(ge=0.0, strict=False)
    freeze_epochs: int = Field(ge=0)  # progressive unfreezing: only the head learns for this many epochs
    grad_clip: float = Field(ge=0.0, strict=False)  # max gradient norm; 0 turns clipping off
    ema_decay: float = Field(ge=0.0, lt=1.0, strict=False)  # EMA of weights, a fixed decay per step; 0: see below
    # EMA of weights as a half-life in epochs of this run's steps, with timm's warm-up (pipeline/training/schedule.py's
    # ema_settings): the same on any dataset size; 0 turns it off. Give ema_decay or ema_half_life, not both.
    ema_half_life: float = Field(ge=0.0, le=100.0, strict=False)
    # The half-life's warm-up: false starts it at the first step (the starting weights decay as any step's do)
    ema_warmup: bool
    augment_strength: float = Field(ge=0.0, le=2.0, strict=False)  # scales section augment; 0: none
    # Each target mixed with the uniform distribution at this weight (timm's recipe: 0.1); 0: none
    label_smoothing: float = Field(ge=0.0, lt=1.0, strict=False)
    # Mixup / CutMix (timm.data.Mixup, a pair per batch): the Beta distribution's alpha of each, 0: off; both on,
    # every batch is one or the other at even odds. Targets (and pseudo-labels' weights) mix as the images do.
    mixup_alpha: float = Field(ge=0.0, le=10.0, strict=False)
    cutmix_alpha: float = Field(ge=0.0, le=10.0, strict=False)
    # Progressive resizing (fastai's recipe): the first epoch trains at this size, each later one larger, in equal
    # steps rounded to 16 px, up to image_size at the last; 0: image_size throughout.
    progressive_from: int = Field(ge=0, le=1024)
    seed: int = Field(ge=0)

    @property
    def predict_size(self) -> int:
        return self.test_image_size or self.image_size

    @pydantic.model_validator(mode="after")
    def _one_ema(self) -> "Recipe":
        if self.ema_decay and self.ema_half_life:
            raise ValueError("ema_decay and ema_half_life are both set; give one and set the other to 0")
        if (self.mixup_alpha or self.cutmix_alpha) and len(self.regions) > 1:
            raise ValueError("mixup_alpha / cutmix_alpha: a net over several regions mixes no images (its batch "
                             "holds each frame's regions side by side); set them to 0")
        if self.progressive_from > self.image_size:
            raise ValueError(f"progressive_from: {self.progressive_from} is larger than image_size "
                             f"({self.image_size}), the size the last epoch trains at")
        return self


# The same keys, each optional: finetune.defaults and every finetune.models entry set some of them.
PartialRecipe = pydantic.create_model(
    "PartialRecipe", __base__=Section,
    **{name: (field.annotation | None, None) for name, field in Recipe.model_fields.items()})
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.]*$")]


class FinetuneParams(Section):
    """Whole-net fine-tuning, one DVC stage per model and fold (finetune@<model>-<fold>)."""

    folds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    amp: bool  # bf16 (fp16 on older GPUs) on CUDA; CPU runs float32
    # Processes per fold, one per device (DistributedDataParallel through torchrun); auto: every visible GPU.
    devices: Literal["auto"] | Annotated[int, Field(ge=1, le=64)]
    workers: Literal["auto"] | Annotated[int, Field(ge=0)]
    # Where training images are augmented: cpu (albumentations in the workers), device (kornia on the model's
    # device, workers only decode; pipeline/views/device_augment.py), auto (device on CUDA, else cpu)
    augment_on: Literal["auto", "cpu", "device"]
    # Test-time views of the fine-tuned nets (held-out and test images alike), averaged; cheap beside training.
    test_views: list[View] = Field(min_length=1)
    defaults: PartialRecipe  # what every model shares unless it says otherwise
    models: dict[ModelName, PartialRecipe] = Field(min_length=1)

    def recipe(self, model: str) -> Recipe:
        """The model's full recipe (parse_params has checked that every one validates)."""
        return Recipe.model_validate(_overlay(self.defaults, self.models[model]))


def _overlay(defaults: BaseModel, entry: BaseModel) -> dict:
    return {**defaults.model_dump(exclude_none=True), **entry.model_dump(exclude_none=True)}


class PseudoParams(Section):
    """A second, leak-free round of fine-tuning with pseudo-labelled test images (pipeline/stages/pseudo.py)."""

    models: list[ModelName]  # models of finetune.models that get a student (pseudo-<model>); [] = off
    temperature: float = Field(gt=0.0, le=10.0, strict=False)  # on the teacher's probabilities; 1 = as they are
    threshold: Fraction  # leave out test images whose top probability is below this; 0 keeps them all
    weight: float = Field(ge=0.0, le=10.0, strict=False)  # a pseudo-labelled image's weight; a labelled one's is 1


class EnsembleParams(Section):
    """Blend, calibrate and post-process every model's predictions (pipeline/stages/ensemble.py)."""

    models: list[str] = Field(min_length=1)  # heads-<backbone> / finetune-<model> folders to blend
    # Calibrations to choose among by cross-validation (pipeline/ensemble/blending.py): none, temperature, vector.
    calibration: list[Literal["none", "temperature", "vector"]] = Field(min_length=1)
    clip_grid: list[Annotated[float, Field(gt=0.0, lt=0.5, strict=False)]] = Field(min_length=1)
    # Test-neighbour smoothing: the k to choose from, out of fold (with the weight); [] turns it off.
    neighbours: list[Annotated[int, Field(ge=1, le=200)]]
    # Where neighbours may be found, chosen out of fold with k and the weight: a backbone of features.backbones
    # (its cached ImageNet features) or a fine-tuned model, finetune-<model> / pseudo-<model> (its embeddings).
    neighbour_features: list[str] = Field(min_length=1)


class Params(Section):
    competition: str
    # Head dropout; top level so that `dvc exp run -S dropout=0.3` reaches it.
    dropout: float = Field(ge=0.0, lt=1.0, strict=False)
    data: DataParams
    own_data: OwnDataParams
    standin: StandinParams
    frames: FramesParams
    folds: FoldsParams
    augment: AugmentParams
    features: FeaturesParams
    heads: HeadsParams
    finetune: FinetuneParams
    pseudo: PseudoParams
    ensemble: EnsembleParams


def _one_line(error: pydantic.ValidationError, source: Path, prefix: str = "") -> str:
    errors = error.errors()
    # A typo shows up as an unknown key plus a missing one; the unknown key is the one to name.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = ".".join([prefix] * bool(prefix) + [str(part) for part in first["loc"]]) or "(top level)"
    if first["type"] == "extra_forbidden":
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
        close = difflib.get_close_matches(str(first["loc"][-1]), missing or _KNOWN_KEYS, n=1)
        return f"{source}: {key}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if first["type"] == "missing":
        return f"{source}: {key}: missing key"
    if first["type"] == "value_error" and isinstance(first.get("input"), dict):  # a check across a section's keys
        return f"{source}: {key}: {first['msg'].removeprefix('Value error, ')}"
    return f"{source}: {key}: {first['msg']} (got {first.get('input')!r})"


_KNOWN_KEYS = sorted({name for section in Section.__subclasses__() for name in section.model_fields})


def parse_params(raw: object, source: Path = PARAMS_FILE) -> Params:
    """Validate an already-parsed params mapping: types and ranges, then how the sections fit together."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except pydantic.ValidationError as error:
        raise PipelineError(_one_line(error, source)) from None
    for model in params.finetune.models:
        try:
            params.finetune.recipe(model)
        except pydantic.ValidationError as error:
            message = _one_line(error, source, f"finetune.models.{model}")
            raise PipelineError(message.replace("missing key", "missing key (set it there or in finetune.defaults)"))
    _check_models(params, source)
    return params


def _check_models(params: Params, source: Path) -> None:
    sizes = {f"features.backbones.{name}.image_size": entry.image_size
             for name, entry in params.features.backbones.items()}
    for name in params.finetune.models:
        recipe = params.finetune.recipe(name)
        sizes[f"finetune.models.{name}.image_size"] = recipe.image_size
        sizes[f"finetune.models.{name}.test_image_size"] = recipe.test_image_size
    too_large = [(key, size) for key, size in sizes.items() if size > params.frames.size]
    if too_large:
        key, size = too_large[0]
        raise PipelineError(f"{source}: {key}: {size} is larger than frames.size ({params.frames.size}), the size the "
                            f"frame cache is decoded for; raise frames.size to at least {size}")
    folds = params.finetune.folds
    if any(f >= params.folds.n_splits for f in folds) or len(set(folds)) != len(folds):
        raise PipelineError(f"{source}: finetune.folds: {folds} must be distinct folds below "
                            f"folds.n_splits={params.folds.n_splits}")
    for section in ("features", "finetune"):
        views = getattr(params, section).test_views
        if len(set(views)) != len(views):
            raise PipelineError(f"{source}: {section}.test_views: a view is listed twice")
    for name in params.finetune.models:
        regions = params.finetune.recipe(name).regions
        if len(set(regions)) != len(regions):
            raise PipelineError(f"{source}: finetune.models.{name}.regions: a region is listed twice")
    unknown = [m for m in params.pseudo.models if m not in params.finetune.models]
    if unknown:
        raise PipelineError(f"{source}: pseudo.models: {unknown[0]!r} is not under finetune.models (a student needs "
                            f"its teacher)")
    known = ([f"heads-{b}" for b in params.features.backbones] + [f"finetune-{m}" for m in params.finetune.models]
             + [f"pseudo-{m}" for m in params.pseudo.models])
    unknown = [m for m in params.ensemble.models if m not in known]
    if unknown:
        raise PipelineError(f"{source}: ensemble.models: {unknown[0]!r} is not a model of this params.yaml "
                            f"(known: {', '.join(known)})")
    spaces = [*params.features.backbones, *(m for m in known if not m.startswith("heads-"))]
    features, blended = params.ensemble.neighbour_features, params.ensemble.models
    unknown = [f for f in features if f not in spaces] if params.ensemble.neighbours else []
    if unknown:
        raise PipelineError(f"{source}: ensemble.neighbour_features: {unknown[0]!r} is neither a backbone nor a "
                            f"fine-tuned model of this params.yaml ({', '.join(spaces)})")
    if params.ensemble.neighbours and not any(f in params.features.backbones or f in blended for f in features):
        raise PipelineError(f"{source}: ensemble.neighbour_features: none of {features} is a backbone or a model "
                            f"of ensemble.models; add one, or set ensemble.neighbours: [] to turn smoothing off")


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run stages from the repository root") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({error})") from None
    params = parse_params(raw, path)
    if not os.environ.get(RECORD_READS):
        return params
    return _Recorded(params, "", _process_reads())  # duck-typed: stages only read attributes


@functools.cache
def _process_reads() -> set[str]:
    """This process's reads, written to ``RECORD_READS``/<pid>.json at exit with the command line."""
    reads: set[str] = set()
    record = Path(os.environ[RECORD_READS]) / f"{os.getpid()}.json"
    atexit.register(lambda: record.write_text(json.dumps({"argv": sys.argv, "reads": sorted(reads)})))
    return reads


def _recorded(value, path: str, reads: set[str]):
    if isinstance(value, BaseModel):
        return _Recorded(value, path, reads)
    if isinstance(value, dict):
        return _RecordedMapping(value, path, reads)
    reads.add(path)
    return value


def unrecorded(params: Params) -> Params:
    """The validated params behind ``load_params``'s recording view (``RECORD_READS``). A check of the params
    against something else (pipeline/data/competitions.py's ``competition_of``) reads them as validation does, and
    what validation reads is not what a stage's work depends on: it must not count towards its `params:` in dvc.yaml."""
    return params._section if isinstance(params, _Recorded) else params


class _Recorded:
    """A params section that notes the dotted path of every key read through it (the ``RECORD_READS`` mode)."""

    def __init__(self, section: BaseModel, path: str, reads: set[str]):
        self._section, self._path, self._reads = section, path, reads

    def __getattr__(self, name: str):
        value = getattr(self._section, name)
        path = f"{self._path}.{name}".lstrip(".")
        if name in type(self._section).model_fields:
            return _recorded(value, path, self._reads)
        if name in vars(type(self._section)):  # our own methods (FinetuneParams.recipe) read through this view
            return functools.partial(getattr(type(self._section), name), self)
        self._reads.add(self._path or "(everything)")  # pydantic's (model_dump, ...) read the whole section
        return value


class _RecordedMapping(Mapping):
    """A mapping of params (backbones, models): listing its keys reads the mapping, an entry reads that entry."""

    def __init__(self, mapping: dict, path: str, reads: set[str]):
        self._mapping, self._path, self._reads = mapping, path, reads

    def __getitem__(self, key):
        return _recorded(self._mapping[key], f"{self._path}.{key}", self._reads)

    def __iter__(self):
        self._reads.add(self._path)
        return iter(self._mapping)

    def __len__(self) -> int:
        self._reads.add(self._path)
        return len(self._mapping)

    def __contains__(self, key) -> bool:
        self._reads.add(self._path)
        return key in self._mapping
