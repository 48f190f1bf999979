"""A user's own image classification data, packed into the layout every stage reads (competition ``own-data``).

What the user has (params section ``own_data``):

- ``train_dir/<class>/<image>``: a folder per class; the folder names are the classes;
- ``test_dir`` (optional): unlabeled images to predict; without it the
  pipeline reports CV metrics and writes no submission.

Images may be JPEG, PNG, WebP, BMP or TIFF (pipeline/data/decoding.py turns each into
8-bit RGB). Every file is checked before anything is packed, so an image that
will not decode is named by its own path, in seconds, not minutes later by the
features stage as a member of the packed zip.

A training image's id is its path under ``train_dir`` (``rust/0002.jpg``), so the
same file name in two class folders is two images; a test image's id is its file
name. Files the operating system leaves in folders (``Thumbs.db``, ``desktop.ini``,
hidden files such as ``.DS_Store``) are skipped with one log line; any other file
that is not an image stops the stage, naming it.

What the download stage writes into ``data/raw/own-data/``: ``images.zip``
(``train/<class>/<img>``, ``test/<img>``), ``labels.csv`` (img, label) and
``sample_submission.csv`` (id plus one uniform probability column per class).
Groups (a patient, a camera, a session) come from ``data.groups_csv``, as for
any competition without groups of its own (``raw_data.copy_groups``), keyed by
the same ids.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import pandas as pd

from pipeline.config import OwnDataParams
from pipeline.data.competitions import OWN_DATA
from pipeline.data.decoding import SUFFIXES, check_image
from pipeline.data.images import ImageArchive, ZipWriter
from pipeline.errors import PipelineError
from pipeline.progress import progress

# What Windows and macOS write into any folder they show (hidden files, .DS_Store included, are skipped too).
OS_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db", "ehthumbs_vista.db"}


def _is_os_file(name: str) -> bool:
    return name.startswith(".") or name.lower() in OS_FILES


def _images(folder: Path, key: str, depth: int, notes: list[str]) -> list[str]:
    """Image files ``depth`` levels below ``folder``, refusing others; the operating system's files are skipped,
    and a line saying so is added to ``notes`` (logged once the download has passed every check)."""
    if not folder.is_dir():
        raise PipelineError(f"params.yaml: own_data.{key}: {folder} is not a folder")
    every = ImageArchive(folder).names()
    names = [n for n in every if not _is_os_file(PurePosixPath(n).name)]
    for name in names:
        if len(PurePosixPath(name).parts) != depth:
            where = "<class>/<image>" if depth == 2 else "<image>"
            raise PipelineError(f"{folder / name}: expected {where} directly under own_data.{key}")
        if not name.lower().endswith(SUFFIXES):
            raise PipelineError(f"{folder / name}: not an image file ({', '.join(SUFFIXES)}); remove it")
    if len(names) < len(every):
        kinds = sorted({PurePosixPath(n).name for n in every} - {PurePosixPath(n).name for n in names})
        notes.append(f"own_data.{key}: skipped {len(every) - len(names)} file(s) the operating system left "
                     f"({', '.join(kinds[:4])}{', ...' if len(kinds) > 4 else ''})")
    return names


def ingest_own_data(settings: OwnDataParams, out_dir: Path, max_unpacked_bytes: int | None) -> list[str]:
    """Pack the user's folders into ``out_dir`` (images.zip, labels.csv, sample_submission.csv); return notes for
    the log (files skipped)."""
    notes: list[str] = []
    train_root = Path(settings.train_dir).expanduser()
    names = _images(train_root, "train_dir", 2, notes)
    train = pd.DataFrame({"img": names, "label": [PurePosixPath(n).parts[0] for n in names]})
    classes = sorted(train.label.unique())
    if len(classes) < 2:
        raise PipelineError(f"{train_root}: found {len(classes)} class folder(s) with images; need at least 2")
    test_root = Path(settings.test_dir).expanduser() if settings.test_dir else None
    test_ids = sorted(_images(test_root, "test_dir", 1, notes)) if test_root else []
    total = sum((train_root / img).stat().st_size for img in train.img)
    total += sum((test_root / name).stat().st_size for name in test_ids)
    if max_unpacked_bytes is not None and total > max_unpacked_bytes:
        raise PipelineError(f"{train_root}: {total:,} bytes of images, over data.max_unpacked_bytes="
                            f"{max_unpacked_bytes:,}")

    train = train.sort_values("img", ignore_index=True)
    files = [(train_root / img, f"{OWN_DATA.train_prefix}{img}") for img in train.img]
    files += [(test_root / name, OWN_DATA.test_member(name)) for name in test_ids]
    for path, _ in progress(files, desc="checking images"):
        check_image(path.read_bytes(), str(path))
    with ZipWriter(out_dir / OWN_DATA.train_archive) as archive:  # the same folders give a byte-identical zip
        for path, member in progress(files, desc="packing images"):
            with open(path, "rb") as stream:
                archive.add(member, stream)
    train[list(OWN_DATA.labels_columns)].to_csv(out_dir / OWN_DATA.labels_csv, index=False)
    sample = pd.DataFrame({OWN_DATA.submission_id: test_ids, **{c: 1.0 / len(classes) for c in classes}})
    sample[[OWN_DATA.submission_id, *classes]].to_csv(out_dir / OWN_DATA.sample_submission, index=False)
    return notes
