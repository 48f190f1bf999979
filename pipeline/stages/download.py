"""download stage: put the competition's files in data/raw/<competition>/ and check them.

Reads params ``competition``, ``data``, ``own_data`` and ``standin``. Writes
``data/raw/<competition>/`` (the competition's image zip(s) and CSVs,
pipeline/data/raw_data.py; ``groups.csv`` from ``data.groups_csv``; the stand-ins add ``solution.csv``), built in a
temporary folder and renamed only once every check has passed.

    python -m pipeline.stages.download
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.compute.cores import stage_command
from pipeline.config import Params, load_params
from pipeline.data.competitions import CompetitionSpec, competition_of, load_spec
from pipeline.data.own_data import ingest_own_data
from pipeline.data.raw_data import check_competition_files, copy_groups, ingest
from pipeline.data.standin import write_standin
from pipeline.errors import PipelineError
from pipeline.kaggle.client import download_competition
from pipeline.paths import raw_dir

log = logging.getLogger(__name__)


def fetch(out_dir: Path, spec: CompetitionSpec, params: Params) -> dict[str, int]:
    """Fill ``out_dir`` (empty) from the configured source; return the checked image counts."""
    source, notes = params.data.source, []
    if source == "standin":
        write_standin(out_dir, spec, params.standin)
    elif spec.ingest_from == "class_folders":
        notes = ingest_own_data(params.own_data, out_dir, params.data.max_unpacked_bytes)
    elif source == "kaggle":
        with tempfile.TemporaryDirectory(dir=out_dir) as download_dir:
            ingest(download_competition(spec.slug, Path(download_dir)), out_dir, spec, params.data.max_unpacked_bytes)
    else:
        if not params.data.local_path:
            raise PipelineError("params.yaml: data.local_path: empty; set it to the competition's zip or folder")
        ingest(Path(params.data.local_path).expanduser(), out_dir, spec, params.data.max_unpacked_bytes)
    spec = load_spec(spec.slug, out_dir)  # own data: the classes are the folders it just packed
    if params.data.groups_csv:
        copy_groups(Path(params.data.groups_csv).expanduser(), params.data.group_column, out_dir, spec)
    counts = check_competition_files(out_dir, spec, params.data.max_unpacked_bytes)
    if source != "standin" and spec.official_counts and counts != spec.official_counts:
        found = (f"found {counts['train']} train and {counts['test']} test images; Kaggle serves "
                 f"{spec.official_counts['train']} and {spec.official_counts['test']}")
        if source == "kaggle":  # a short count from Kaggle means a broken download
            raise PipelineError(f"{out_dir}: {found}; the download is incomplete, run it again")
        log.warning("warning: %s: %s; going on with the images you have", params.data.local_path, found)
    for note in notes:  # after every check: a refused download prints its one line and nothing else
        log.info("%s", note)
    return counts


@stage_command
def main() -> None:
    params = load_params()
    spec = competition_of(params)
    target = raw_dir(spec.slug)
    with atomic_dir(target) as tmp:
        try:
            counts = fetch(tmp, spec, params)
        except PipelineError as error:
            # Name the file as the user knows it, not by the temporary folder it was checked in.
            shown = params.data.local_path if params.data.source == "local" and params.data.local_path else target
            raise PipelineError(str(error).replace(str(tmp), str(shown))) from None
    log.info("%s: %d train and %d test images from %s", target, counts["train"], counts["test"], params.data.source)


if __name__ == "__main__":
    main()
