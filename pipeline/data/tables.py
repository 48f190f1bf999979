"""The tables stages hand each other: the run's images (sample stage) and their folds (folds stage).

``data/sample/<competition>/train.csv`` (img, label, group, member) and ``test.csv`` (img, member) list the images
a run uses; ``data/folds/<competition>/folds.csv`` (img, label, group, fold) splits the training images. This module
reads and writes them and imports nothing that decodes images, so a stage that only needs the tables (heads, the
ensemble) does not re-run when image decoding changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.paths import folds_csv, raw_dir, sample_dir


@dataclass(frozen=True)
class RunImages:
    """The images a run uses: where they are, the training table and the test table."""

    raw: Path  # data/raw/<competition>/: the archives
    train: pd.DataFrame  # img, label, group, member
    test: pd.DataFrame  # img, member; sample-submission order

    @classmethod
    def load(cls, competition: str) -> "RunImages":
        """What the sample stage chose (ids and labels as text)."""
        def read(name: str) -> pd.DataFrame:
            return pd.read_csv(sample_dir(competition) / name, dtype=str, keep_default_na=False)

        return cls(raw_dir(competition), read("train.csv"), read("test.csv"))

    def write(self, folder: Path) -> None:
        self.train.to_csv(folder / "train.csv", index=False)
        self.test.to_csv(folder / "test.csv", index=False)


def load_folds(competition: str) -> pd.DataFrame:
    """The folds stage's table, ids and labels as text (Dogs vs. Cats test ids are numbers)."""
    return pd.read_csv(folds_csv(competition), dtype={"img": str, "label": str, "group": str},
                       keep_default_na=False)
