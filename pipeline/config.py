"""params.yaml -> one frozen, typed config object.

Every stage calls ``load_params()`` and reads only its own section. Unknown keys,
wrong types and out-of-range values stop the stage with one line naming the key,
e.g. ``error: params.yaml: folds.n_splits: Input should be greater than or equal to 2 (got 1)``.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.competitions import get_spec
from pipeline.errors import PipelineError

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(Section):
    """Where the competition's files come from (download stage)."""

    source: Literal["standin", "kaggle", "local"]
    # For source=local: the competition's zip as Kaggle serves it, or a folder of its files.
    local_path: str
    # Refuse archives that would expand past this many bytes (zip-bomb guard).
    max_unpacked_bytes: int = Field(gt=0)


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


class Params(Section):
    competition: str
    # Head dropout; top level so that `dvc exp run -S dropout=0.3` reaches it.
    dropout: float = Field(ge=0.0, lt=1.0, strict=False)
    data: DataParams
    standin: StandinParams
    folds: FoldsParams


def _one_line(error: pydantic.ValidationError, source: Path) -> str:
    errors = error.errors()
    # A typo shows up as an unknown key plus a missing one; the unknown key is the one to name.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
        close = difflib.get_close_matches(str(first["loc"][-1]), missing, n=1)
        return f"{source}: {key}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if first["type"] == "missing":
        return f"{source}: {key}: missing key"
    return f"{source}: {key}: {first['msg']} (got {first.get('input')!r})"


def parse_params(raw: object, source: Path = PARAMS_FILE) -> Params:
    """Validate an already-parsed params mapping."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except pydantic.ValidationError as error:
        raise PipelineError(_one_line(error, source)) from None
    get_spec(params.competition, source)
    return params


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run stages from the repository root") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({error})") from None
    return parse_params(raw, path)
