"""Overlay a preset (a partial params.yaml, e.g. presets/gpu.yaml) on params.yaml, validated as `dvc repro`
validates params, so a preset a user copies is one that runs.

    python -m pipeline.preset presets/gpu.yaml            # rewrite params.yaml with the preset's keys (comments kept)
    python -m pipeline.preset presets/gpu.yaml --check    # only validate the result

Mappings merge key by key at every depth; a list or a value replaces what was there. A result that does not
validate (an unknown key, an image size above frames.size...) is refused in one line and params.yaml is left as it
was. Commit the new params.yaml and `dvc repro`, or `dvc exp run` it as an experiment.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from ruamel.yaml import YAML, YAMLError

from pipeline.atomic import atomic_file
from pipeline.config import PARAMS_FILE, Params, parse_params
from pipeline.data.competitions import competition_of
from pipeline.errors import PipelineError, cli


def overlay(params, preset) -> object:
    """``preset`` over ``params`` (round-trip YAML mappings, so params.yaml's comments survive), in place."""
    if not hasattr(preset, "items"):
        return preset
    for key, value in preset.items():
        params[key] = overlay(params[key], value) if key in params and hasattr(params[key], "items") and \
            hasattr(value, "items") else value
    return params


def _read(round_trip: YAML, path: Path):
    """The YAML document at ``path``, its comments kept. ruamel's round-trip loader builds plain mappings, lists and
    scalars only (it refuses Python tags), like yaml.safe_load."""
    try:
        return round_trip.load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None


def apply_preset(preset_path: Path, params_path: Path = PARAMS_FILE) -> tuple[str, Params]:
    """params.yaml's text with the preset laid over it, and the validated params it holds."""
    round_trip = YAML()
    round_trip.width, round_trip.preserve_quotes = 4096, True  # params.yaml's lines and quotes as they were
    merged = overlay(_read(round_trip, params_path), _read(round_trip, preset_path) or {})
    text = io.StringIO()
    round_trip.dump(merged, text)
    source = Path(f"{params_path} + {preset_path}")
    params = parse_params(YAML(typ="safe").load(text.getvalue()), source)
    competition_of(params, source)  # as the stages check it: a preset that does not fit the competition is refused
    return text.getvalue(), params


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", type=Path)
    parser.add_argument("--check", action="store_true", help="validate only; params.yaml is not written")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="the params file to lay it over")
    args = parser.parse_args()
    text, params = apply_preset(args.preset, args.params)
    if args.check:
        print(f"{args.preset}: valid over {args.params} ({len(params.finetune.models)} fine-tuned models, "
              f"frames.size {params.frames.size})")
        return
    with atomic_file(args.params) as tmp:
        tmp.write_text(text)
    print(f"{args.params}: {args.preset} applied; `git diff {args.params}` shows what changed")


if __name__ == "__main__":
    main()
