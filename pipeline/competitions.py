"""What a competition is: files, classes, how labels and groups are read, submission format, metric.

One ``CompetitionSpec`` per competition; stages look theirs up by the
``competition`` key of params.yaml and never hard-code a file name or class list.
Two ways of labelling the training images are supported:

- ``csv``: images sit in ``train/<class>/`` and a labels CSV lists id, class and
  group (State Farm's ``driver_imgs_list.csv``; own data's ``labels.csv``);
- ``file_name``: the class is the file name's first dot-separated part,
  ``train/dog.123.jpg`` (Dogs vs. Cats), and there is no group.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.paths import raw_dir


@dataclass(frozen=True)
class CompetitionSpec:
    slug: str
    classes: tuple[str, ...]  # empty: the data's own (own data: its class folders, in the sample submission)
    train_archive: str  # the zip DVC tracks that holds the training images; images are read straight from it
    test_archive: str  # may be the same zip
    labels_from: Literal["csv", "file_name"]
    labels_csv: str  # "" when the labels are in the file names
    labels_columns: tuple[str, ...]  # the labels CSV's columns, as the competition names them
    id_column: str  # in the labels CSV: the image id (train_ids says which)
    label_column: str  # in the labels CSV and in the stand-in's solution.csv
    group_column: str  # folds never split a group (State Farm: the driver); "" = none of its own (data.groups_csv)
    submission_id: str  # the sample submission's id column
    test_suffix: str  # test member = test/<id><suffix> (Dogs vs. Cats ids are numbers, files <id>.jpg)
    positive_class: str  # binary competitions submit one column, this class's probability; "" = one per class
    metric: Literal["multiclass_log_loss", "binary_log_loss"]
    official_counts: dict[str, int]  # what Kaggle serves, checked for real downloads; {} = not checked
    flip_safe: bool = False  # may images be mirrored (augmentation, test views) without changing the class?
    kaggle: bool = True  # can the kaggle client download it?
    # Where the files come from when they are not Kaggle's: the competition's own files, or the user's class
    # folders that the download stage packs into the competition's layout (pipeline/own_data.py).
    ingest_from: Literal["competition_files", "class_folders"] = "competition_files"
    classes_from_data: bool = False  # classes are the data's own: the sample submission's columns (load_spec)
    # A training image's id: its file name (Kaggle's ids), or its path under the class folders (own data:
    # ``rust/0002.jpg``, so that ``rust/1.jpg`` and ``healthy/1.jpg`` are two images).
    train_ids: Literal["file_name", "path"] = "file_name"
    train_prefix: str = "train/"
    test_prefix: str = "test/"
    sample_submission: str = "sample_submission.csv"
    solution_csv: str = "solution.csv"  # hidden test labels; only the stand-ins ship one

    @property
    def submission_columns(self) -> tuple[str, ...]:
        return (self.submission_id, "label") if self.positive_class else (self.submission_id, *self.classes)

    @property
    def archives(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.train_archive, self.test_archive)))

    @property
    def required_files(self) -> tuple[str, ...]:
        return (*self.archives, *([self.labels_csv] if self.labels_csv else []), self.sample_submission)

    def class_indices(self, labels) -> np.ndarray:
        """Class names -> column indices of every probability table."""
        return np.array([self.classes.index(label) for label in labels], dtype=np.int64)

    def test_member(self, image_id: str) -> str:
        return f"{self.test_prefix}{image_id}{self.test_suffix}"


STATE_FARM = CompetitionSpec(
    slug="state-farm-distracted-driver-detection",
    classes=tuple(f"c{i}" for i in range(10)),
    train_archive="imgs.zip",
    test_archive="imgs.zip",
    labels_from="csv",
    labels_csv="driver_imgs_list.csv",
    labels_columns=("subject", "classname", "img"),
    id_column="img",
    label_column="classname",
    group_column="subject",
    submission_id="img",
    test_suffix="",
    positive_class="",
    metric="multiclass_log_loss",
    official_counts={"train": 22_424, "test": 79_726},
)

DOGS_VS_CATS = CompetitionSpec(
    slug="dogs-vs-cats-redux-kernels-edition",
    classes=("cat", "dog"),
    train_archive="train.zip",
    test_archive="test.zip",
    labels_from="file_name",
    labels_csv="",
    labels_columns=(),
    id_column="img",
    label_column="label",
    group_column="",
    submission_id="id",
    test_suffix=".jpg",
    positive_class="dog",
    metric="binary_log_loss",
    official_counts={"train": 25_000, "test": 12_500},
    flip_safe=True,
)

# A folder per class and an optional test folder (params section own_data); download packs them into this
# layout, the same as State Farm's: images.zip (train/<class>/, test/), labels.csv, sample_submission.csv.
# Groups, when the user has them, come like Dogs vs. Cats' from data.groups_csv (raw_data.copy_groups).
OWN_DATA = CompetitionSpec(
    slug="own-data",
    classes=(),
    train_archive="images.zip",
    test_archive="images.zip",
    labels_from="csv",
    labels_csv="labels.csv",
    labels_columns=("img", "label"),
    id_column="img",
    label_column="label",
    group_column="",
    submission_id="id",
    test_suffix="",
    positive_class="",
    metric="multiclass_log_loss",
    official_counts={},
    flip_safe=True,  # the user's call: augment.hflip stays off unless they turn it on
    kaggle=False,
    ingest_from="class_folders",
    classes_from_data=True,
    train_ids="path",
)

SPECS = {spec.slug: spec for spec in (STATE_FARM, DOGS_VS_CATS, OWN_DATA)}


def load_spec(slug: str, raw: Path | None = None, source: Path = Path("params.yaml")) -> CompetitionSpec:
    """The competition's spec; the one way every stage gets it.

    A spec whose classes come from the data (own data) gets them from ``raw``'s sample submission
    (``data/raw/<slug>/`` unless given), written by the download stage. Before that file exists only
    the download stage asks, and it never reads ``classes`` before writing it.
    """
    try:
        spec = SPECS[slug]
    except KeyError:
        raise PipelineError(
            f"{source}: competition: unknown competition {slug!r}; known: {', '.join(sorted(SPECS))}"
        ) from None
    if not spec.classes_from_data:
        return spec
    path = (raw if raw is not None else raw_dir(slug)) / spec.sample_submission
    if not path.is_file():
        return spec
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: cannot read the class columns ({error})") from None
    if len(header) < 3 or header[0] != spec.submission_id:
        raise PipelineError(f"{path}: expected columns {spec.submission_id}, <class>, <class>, ...")
    return replace(spec, classes=tuple(header[1:]))
