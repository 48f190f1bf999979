"""What a competition is: files, classes, grouping column, submission format, metric.

One ``CompetitionSpec`` per Kaggle competition; stages look theirs up by the
``competition`` key of params.yaml and never hard-code a file name or class list.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class CompetitionSpec:
    slug: str
    classes: tuple[str, ...]
    class_descriptions: tuple[str, ...]
    image_archive: str  # the zip DVC tracks; images are read straight from it
    train_prefix: str  # archive folder holding one sub-folder per class
    test_prefix: str  # archive folder holding the unlabeled test images
    labels_csv: str
    labels_columns: tuple[str, ...]
    id_column: str  # image file name, the key of every table
    label_column: str
    group_column: str  # folds never split a group (State Farm: the driver)
    sample_submission: str
    solution_csv: str  # hidden test labels; only the stand-in ships one
    metric: str
    official_counts: dict[str, int]  # what Kaggle serves; checked for real downloads
    flip_safe: bool = False  # may images be mirrored (augmentation, test views) without changing the class?

    @property
    def submission_columns(self) -> tuple[str, ...]:
        return (self.id_column, *self.classes)

    def train_member(self, image_id: str, label: str) -> str:
        """Archive member of a training image."""
        return f"{self.train_prefix}{label}/{image_id}"

    def train_members(self, table) -> list[str]:
        """Archive members of the training images in ``table`` (rows with id and label columns), in row order."""
        return [self.train_member(i, c) for i, c in zip(table[self.id_column], table[self.label_column])]

    def test_member(self, image_id: str) -> str:
        return f"{self.test_prefix}{image_id}"

    @property
    def required_files(self) -> tuple[str, ...]:
        return (self.image_archive, self.labels_csv, self.sample_submission)


STATE_FARM = CompetitionSpec(
    slug="state-farm-distracted-driver-detection",
    classes=tuple(f"c{i}" for i in range(10)),
    class_descriptions=(
        "safe driving",
        "texting - right",
        "talking on the phone - right",
        "texting - left",
        "talking on the phone - left",
        "operating the radio",
        "drinking",
        "reaching behind",
        "hair and makeup",
        "talking to passenger",
    ),
    image_archive="imgs.zip",
    train_prefix="train/",
    test_prefix="test/",
    labels_csv="driver_imgs_list.csv",
    labels_columns=("subject", "classname", "img"),
    id_column="img",
    label_column="classname",
    group_column="subject",
    sample_submission="sample_submission.csv",
    solution_csv="solution.csv",
    metric="multiclass_log_loss",
    official_counts={"train": 22_424, "test": 79_726},
)

SPECS = {spec.slug: spec for spec in (STATE_FARM,)}


def get_spec(slug: str, source: Path = Path("params.yaml")) -> CompetitionSpec:
    try:
        return SPECS[slug]
    except KeyError:
        raise PipelineError(
            f"{source}: competition: unknown competition {slug!r}; known: {', '.join(sorted(SPECS))}"
        ) from None
