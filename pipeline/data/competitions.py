"""What a competition is: files, classes, how labels and groups are read, submission format, metric.

A competition is described, not coded: one YAML file per competition in ``competitions/`` (its README lists the
keys), read here into one ``CompetitionSpec``; stages look theirs up by the ``competition`` key of params.yaml
and never hard-code a file name or class list. The shapes of labels, as Kaggle's image competitions have them:

- ``class_folders``: images sit in ``train/<class>/``, and a labels CSV may list id, class and a group
  (State Farm's ``driver_imgs_list.csv``; own data's ``labels.csv``; Plant Seedlings has the folders alone);
- ``file_name``: the class is the file name's first dot-separated part, ``train/dog.123.jpg`` (Dogs vs. Cats);
- ``id_column``: a CSV of id and class, the images flat in one folder (Aerial Cactus, APTOS 2019, Cassava);
- ``one_hot``: a CSV of id and one 0/1 column per class (Plant Pathology 2020).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pydantic
import yaml

from pipeline.config import PARAMS_FILE, AugmentParams, Params, unrecorded
from pipeline.data.metrics import METRICS, Metric
from pipeline.errors import PipelineError
from pipeline.paths import raw_dir

# Beside params.yaml in the repository; the package's own copy's parent, so a test's repository copy reads its own.
DESCRIPTIONS = Path(__file__).resolve().parents[2] / "competitions"
LabelShape = Literal["class_folders", "file_name", "id_column", "one_hot"]
SubmissionValues = Literal["probabilities", "positive", "class"]


@dataclass(frozen=True)
class CompetitionSpec:
    slug: str
    classes: tuple[str, ...]  # empty: the data's own (own data: its class folders, in the sample submission)
    train_archive: str  # the zip DVC tracks that holds the training images; images are read straight from it
    test_archive: str  # may be the same zip
    labels_from: LabelShape
    labels_csv: str  # "" when the labels are in the file names
    labels_columns: tuple[str, ...]  # the labels CSV's columns that must be there, as the competition names them
    id_column: str  # in the labels CSV: the image id (train_ids says which)
    label_column: str  # in the labels CSV (one_hot: "label") and in the stand-in's solution.csv
    group_column: str  # folds never split a group (State Farm: the driver); "" = none of its own (data.groups_csv)
    submission_id: str  # the sample submission's id column
    test_suffix: str  # test member = test/<id><suffix> (Dogs vs. Cats ids are numbers, files <id>.jpg)
    positive_class: str  # submission values "positive": this class's probability is the one column
    metric: str  # a name of pipeline/data/metrics.py's METRICS
    official_counts: dict[str, int]  # what Kaggle serves, checked for real downloads; {} = not checked
    flip_safe: bool = False  # may images be mirrored (augmentation, test views) without changing the class?
    kaggle: bool = True  # can the kaggle client download it?
    # Where the files come from when they are not Kaggle's: the competition's own files, or the user's class
    # folders that the download stage packs into the competition's layout (pipeline/data/own_data.py).
    ingest_from: Literal["competition_files", "class_folders"] = "competition_files"
    classes_from_data: bool = False  # classes are the data's own: the sample submission's columns (load_spec)
    # A training image's id: its file name (Kaggle's ids), or its path under the class folders (own data:
    # ``rust/0002.jpg``, so that ``rust/1.jpg`` and ``healthy/1.jpg`` are two images).
    train_ids: Literal["file_name", "path"] = "file_name"
    train_prefix: str = "train/"
    test_prefix: str = "test/"
    train_suffix: str = ""  # id_column / one_hot: train member = <train_prefix><id><train_suffix>
    sample_submission: str = "sample_submission.csv"
    solution_csv: str = "solution.csv"  # hidden test labels; only the stand-ins ship one
    submission_values: SubmissionValues = "probabilities"
    submission_column: str = "label"  # the one column of a "positive" or "class" submission
    title: str = ""
    standin: dict = field(default_factory=dict)  # how pipeline/data/standin.py draws it (competitions/README.md)

    @property
    def submission_columns(self) -> tuple[str, ...]:
        if self.submission_values == "probabilities":
            return (self.submission_id, *self.classes)
        return (self.submission_id, self.submission_column)

    @property
    def scorer(self) -> Metric:
        return METRICS[self.metric]

    @property
    def archives(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.train_archive, self.test_archive)))

    @property
    def required_files(self) -> tuple[str, ...]:
        return (*self.archives, *([self.labels_csv] if self.labels_csv else []), self.sample_submission)

    @property
    def labels_in_csv_rows(self) -> bool:
        """The labels CSV alone says which images there are (images flat in a folder the test images may share)."""
        return self.labels_from in ("id_column", "one_hot")

    def class_indices(self, labels) -> np.ndarray:
        """Class names -> column indices of every probability table."""
        return np.array([self.classes.index(label) for label in labels], dtype=np.int64)

    def train_member(self, image_id: str) -> str:
        return f"{self.train_prefix}{image_id}{self.train_suffix}"

    def test_member(self, image_id: str) -> str:
        return f"{self.test_prefix}{image_id}{self.test_suffix}"


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class _Images(_Strict):
    archive: str = pydantic.Field(pattern=r"\.zip$")
    folder: str = pydantic.Field(pattern=r"^[^/].*/$")  # "train/": a folder inside the archive
    suffix: str = ""


class _Labels(_Strict):
    shape: LabelShape
    csv: str = ""
    id: str = "img"
    label: str = "label"
    group: str = ""
    columns: list[str] = []


class _Submission(_Strict):
    id: str
    values: SubmissionValues
    column: str = "label"
    positive_class: str = ""


class _Description(_Strict):
    title: str
    kaggle: bool = True
    classes: list[str] = []
    classes_from_data: bool = False
    ingest_from: Literal["competition_files", "class_folders"] = "competition_files"
    train_ids: Literal["file_name", "path"] = "file_name"
    train_images: _Images
    test_images: _Images
    labels: _Labels
    sample_submission: str = "sample_submission.csv"
    submission: _Submission
    metric: Literal[tuple(METRICS)]  # type: ignore[valid-type]
    flip_safe: bool = False
    official_counts: dict[Literal["train", "test"], int] = {}
    standin: dict = {}

    @pydantic.field_validator("classes", mode="before")
    @classmethod
    def _as_text(cls, classes):  # APTOS' grades 0-4 are classes "0".."4", as its CSV spells them
        return [str(c) for c in classes] if isinstance(classes, list) else classes


def _problem(description: _Description) -> tuple[str, str] | None:
    """(key, what is wrong) with how the description's parts fit together; None when they fit."""
    d, labels, submission = description, description.labels, description.submission
    if not d.classes and not d.classes_from_data:
        return "classes", "missing (list the classes, or set classes_from_data: true)"
    if len(set(d.classes)) != len(d.classes):
        return "classes", "a class is listed twice"
    if labels.shape in ("id_column", "one_hot") and not labels.csv:
        return "labels.csv", f"missing: labels of shape {labels.shape} are read from a CSV"
    if labels.shape == "class_folders" and not labels.csv and (labels.group or labels.columns):
        return "labels.csv", "missing: a group or columns are read from a CSV (class folders alone give the labels)"
    if labels.shape == "one_hot" and (labels.group or labels.columns):
        return "labels", "one_hot labels take id and csv only (the class columns are the classes)"
    if submission.values == "positive":
        if len(d.classes) != 2 or submission.positive_class not in d.classes:
            return "submission.positive_class", f"one of two classes {d.classes}"
    elif submission.positive_class:
        return "submission.positive_class", "only with values: positive"
    if METRICS[d.metric].binary and submission.values != "positive":
        return "submission.values", f"{d.metric} scores one probability column: positive"
    if METRICS[d.metric].decides and submission.values != "class":
        return "submission.values", f"{d.metric} scores a class: class"
    if submission.values == "class" and not METRICS[d.metric].decides:
        return "submission.values", f"{d.metric} scores probabilities, not a class"
    if d.train_images.archive == d.test_images.archive and d.train_images.folder == d.test_images.folder \
            and labels.shape not in ("id_column", "one_hot"):
        return "test_images.folder", "shared with the train images: only CSV-listed labels can tell them apart"
    return None


def read_description(path: Path, slug: str) -> CompetitionSpec:
    """A description file -> its ``CompetitionSpec``; a wrong key or value is one line naming file and key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PipelineError(f"{path}: not a readable YAML file ({' '.join(str(error).split())})") from None
    try:
        d = _Description.model_validate(raw)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        what = "unknown key" if first["type"] == "extra_forbidden" else "missing key" if first["type"] == "missing" \
            else f"{first['msg']} (got {first.get('input')!r})"
        raise PipelineError(f"{path}: {key}: {what}") from None
    problem = _problem(d)
    if problem:
        raise PipelineError(f"{path}: {problem[0]}: {problem[1]}")
    labels = d.labels
    label_column = "label" if labels.shape == "one_hot" else labels.label
    columns = labels.columns or [c for c in (labels.group, labels.id, label_column) if c and labels.shape != "one_hot"]
    if labels.shape == "one_hot":
        columns = [labels.id, *d.classes]
    if labels.shape == "file_name" or not labels.csv:
        columns = []
    return CompetitionSpec(
        slug=slug, title=d.title, classes=tuple(d.classes), kaggle=d.kaggle,
        train_archive=d.train_images.archive, test_archive=d.test_images.archive,
        train_prefix=d.train_images.folder, test_prefix=d.test_images.folder,
        train_suffix=d.train_images.suffix, test_suffix=d.test_images.suffix,
        labels_from=labels.shape, labels_csv=labels.csv, labels_columns=tuple(columns), id_column=labels.id,
        label_column=label_column, group_column=labels.group, sample_submission=d.sample_submission,
        submission_id=d.submission.id, submission_values=d.submission.values, submission_column=d.submission.column,
        positive_class=d.submission.positive_class, metric=d.metric, flip_safe=d.flip_safe,
        official_counts=dict(d.official_counts), ingest_from=d.ingest_from, classes_from_data=d.classes_from_data,
        train_ids=d.train_ids, standin=dict(d.standin))


def described(folder: Path = DESCRIPTIONS) -> list[str]:
    """Every described competition's slug."""
    return sorted(path.stem for path in folder.glob("*.yaml"))


def load_spec(slug: str, raw: Path | None = None, source: Path = Path("params.yaml"),
              folder: Path = DESCRIPTIONS) -> CompetitionSpec:
    """The spec of competition ``slug``, as its description says (stages get it through ``competition_of``, which also
    checks the params against it).

    A spec whose classes come from the data (own data) gets them from ``raw``'s sample submission
    (``data/raw/<slug>/`` unless given), written by the download stage. Before that file exists only
    the download stage asks, and it never reads ``classes`` before writing it.
    """
    path = folder / f"{slug}.yaml"
    if "/" in slug or not path.is_file():
        raise PipelineError(f"{source}: competition: unknown competition {slug!r} (no {path.name} in {folder}); "
                            f"known: {', '.join(described(folder))}")
    spec = read_description(path, slug)
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


def competition_of(params: Params, source: Path = PARAMS_FILE, raw: Path | None = None) -> CompetitionSpec:
    """The spec of ``params.competition``, once the params are checked against it (flips its classes do not
    survive, groups it already has, a source it is not on): every stage, command and the notebook gets its
    competition this way, so a params.yaml that does not fit its competition stops in one line naming the key."""
    # A notebook's flat bundle has the run's description beside its params.yaml (pipeline/kaggle/inference.py).
    beside = source.parent / f"{params.competition}.yaml"
    spec = load_spec(params.competition, raw, source, **({"folder": source.parent} if beside.is_file() else {}))
    _check_params(unrecorded(params), spec, source)
    return spec


def augment_of(params: Params, spec: CompetitionSpec) -> AugmentParams:
    """Section augment as it runs on ``spec``: ``hflip: auto`` decided by the description (on where flip-safe)."""
    if params.augment.hflip != "auto":
        return params.augment
    return params.augment.model_copy(update={"hflip": spec.flip_safe})


def finetune_views(params: Params, spec: CompetitionSpec) -> list[str]:
    """The fine-tuned nets' test-time views: ``finetune.test_views``, and the mirrored frame beside them where
    ``augment.hflip: auto`` turned flips on (a net that trained on mirrors predicts them as well)."""
    views = list(params.finetune.test_views)
    if params.augment.hflip == "auto" and spec.flip_safe and "hflip" not in views:
        views.append("hflip")
    return views


def _check_params(params: Params, spec: CompetitionSpec, source: Path) -> None:
    if params.data.source == "kaggle" and not spec.kaggle:
        raise PipelineError(f"{source}: data.source: {spec.slug} is not on Kaggle; use local (or standin)")
    if spec.ingest_from == "class_folders" and params.data.source == "local" and not params.own_data.train_dir:
        raise PipelineError(f"{source}: own_data.train_dir: empty; set it to your folder of class folders")
    if bool(params.data.groups_csv) != bool(params.data.group_column):
        raise PipelineError(f"{source}: data.group_column: give both groups_csv and group_column, or neither")
    if params.data.groups_csv and spec.group_column:
        raise PipelineError(f"{source}: data.groups_csv: {spec.slug} groups its images by {spec.group_column} "
                            f"already; leave it empty")
    if params.folds.group_by == "near_duplicates" and (spec.group_column or params.data.groups_csv):
        given = "data.groups_csv gives them" if params.data.groups_csv else f"{spec.slug} has {spec.group_column}"
        raise PipelineError(f"{source}: folds.group_by: near_duplicates is for data without groups; {given}")
    if params.folds.near_duplicate_backbone not in params.features.backbones:
        raise PipelineError(f"{source}: folds.near_duplicate_backbone: {params.folds.near_duplicate_backbone!r} is "
                            f"not under features.backbones")
    if not spec.flip_safe:
        if params.augment.hflip is True:
            raise PipelineError(f"{source}: augment.hflip: {spec.slug} classes change under a horizontal flip")
        for section in ("features", "finetune"):
            if "hflip" in getattr(params, section).test_views:
                raise PipelineError(f"{source}: {section}.test_views: {spec.slug} classes change under a horizontal "
                                    f"flip")



def __getattr__(name: str) -> CompetitionSpec:
    """``STATE_FARM``, ``DOGS_VS_CATS``, ``OWN_DATA``: the three first competitions' specs, read when first asked
    (a notebook's installed package has no descriptions folder, and asks for none)."""
    slugs = {"STATE_FARM": "state-farm-distracted-driver-detection",
             "DOGS_VS_CATS": "dogs-vs-cats-redux-kernels-edition", "OWN_DATA": "own-data"}
    if name not in slugs:
        raise AttributeError(name)
    spec = read_description(DESCRIPTIONS / f"{slugs[name]}.yaml", slugs[name])
    globals()[name] = spec
    return spec
