"""Hidden test labels, ``solution.csv``, read in the competition's own words.

Kaggle publishes a competition's solution in its submission's columns, and a competitor who holds out images of
their own writes theirs the same way: the submission's id column and one of

- a column of class names: the labels CSV's own label column (State Farm's ``classname``, Cassava's ``label``), or
  the submission's column where the submission is a class (Plant Seedlings' ``species``, APTOS' ``diagnosis``);
- where the submission is one class's probability (Dogs vs. Cats' ``label``, Aerial Cactus' ``has_cactus``): that
  column, 1 for the class and 0 for the other (class names are read as well);
- where the submission is a probability per class: one 0/1 column per class, a single 1 a row (Plant Pathology's
  ``healthy,multiple_diseases,rust,scab``; State Farm's ``c0..c9``);

and optionally Kaggle's ``Usage`` (Public/Private). Other columns (State Farm's ``subject``) are left alone. Past
this module a solution is one table: the id, ``label`` (class names) and ``Usage`` when given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.data.competitions import CompetitionSpec
from pipeline.errors import PipelineError

LABEL = "label"  # the read table's column of class names


def class_columns(spec: CompetitionSpec) -> tuple[str, ...]:
    """The names a column of class names may have in the competition's solution, its submission's first."""
    names = []
    if spec.submission_values in ("class", "positive"):
        names.append(spec.submission_column)
    if spec.labels_csv and spec.labels_from != "one_hot":
        names.append(spec.label_column)
    return tuple(dict.fromkeys(names))


def one_hot_read(spec: CompetitionSpec) -> bool:
    """A submission of a probability per class has its solution as one 0/1 column per class, too."""
    return spec.submission_values == "probabilities"


def solution_columns(spec: CompetitionSpec) -> tuple[str, ...]:
    """The form a stand-in writes and docs/competitions.md lists: the one Kaggle publishes (one-hot labels stay
    one-hot; otherwise the competition's column of class names)."""
    names = class_columns(spec)
    if spec.labels_from == "one_hot" or not names:
        return (spec.submission_id, *spec.classes)
    return (spec.submission_id, names[0])


def solution_table(ids: Sequence[str], labels: Sequence[str], spec: CompetitionSpec) -> pd.DataFrame:
    """Labels (class names) in the competition's solution form (``solution_columns``)."""
    columns = solution_columns(spec)
    table = pd.DataFrame({spec.submission_id: list(ids)})
    labels = pd.Series(list(labels), dtype=str)
    if len(columns) > 2:
        for name in columns[1:]:
            table[name] = (labels == name).astype(int).to_numpy()
    elif spec.submission_values == "positive":
        table[columns[1]] = (labels == spec.positive_class).astype(int).to_numpy()
    else:
        table[columns[1]] = labels.to_numpy()
    return table


def expected_forms(spec: CompetitionSpec) -> str:
    """The accepted columns in words, for an error line and the docs."""
    what = "class names"
    if spec.submission_values == "positive" and set(spec.classes) != {"0", "1"}:
        what = f"1 for {spec.positive_class}, 0 for {next(c for c in spec.classes if c != spec.positive_class)}"
    forms = [f"{name!r} ({what})" for name in class_columns(spec)]
    if one_hot_read(spec):
        named = (", ".join(map(repr, spec.classes)) if 0 < len(spec.classes) <= 12 else
                 f"{len(spec.classes)} columns" if spec.classes else "named as the classes")
        forms.append(f"one 0/1 column per class ({named})")
    return f"{spec.submission_id!r} and " + " or ".join(forms)


def read_solution(path: Path, spec: CompetitionSpec) -> pd.DataFrame:
    """``solution.csv`` -> id, ``label`` (class names), ``Usage`` when given; any other form is refused in one line
    naming the columns found and the ones expected."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: not a readable CSV ({' '.join(str(error).split())})") from None
    return solution_labels(table, spec, path)


def solution_labels(table: pd.DataFrame, spec: CompetitionSpec, where: Path | str = "solution.csv") -> pd.DataFrame:
    """A solution table in the competition's own columns (as text) -> id, ``label`` (class names), ``Usage`` when
    given; errors name ``where``."""
    table = table.astype(str)
    found = list(table.columns)
    column = next((name for name in class_columns(spec) if name in found), None)
    one_hot = one_hot_read(spec) and set(spec.classes) <= set(found)
    if spec.submission_id not in found or (column is None and not one_hot):
        raise PipelineError(f"{where}: columns {found}; expected {expected_forms(spec)}")
    if column is not None:
        labels = _class_names(table[column], spec, where, column)
    else:
        labels = _from_one_hot(table[list(spec.classes)], spec, where)
    read = pd.DataFrame({spec.submission_id: table[spec.submission_id], LABEL: labels})
    if "Usage" in found:
        read["Usage"] = table["Usage"]
    return read


def _class_names(values: pd.Series, spec: CompetitionSpec, path: Path | str, column: str) -> pd.Series:
    names = values.str.strip()
    if spec.submission_values == "positive" and not names.isin(spec.classes).all():
        # Kaggle's form of a one-probability submission: 1 for the positive class, 0 for the other
        other = next(c for c in spec.classes if c != spec.positive_class)
        names = names.map({"1": spec.positive_class, "0": other, "1.0": spec.positive_class, "0.0": other})
        bad = names.isna()
        if bad.any():
            raise PipelineError(f"{path}: row {_row(bad)}: {column} {values[bad].iloc[0]!r}; expected 1 "
                                f"({spec.positive_class}), 0 ({other}) or a class name")
        return names
    unknown = ~names.isin(spec.classes)
    if unknown.any():
        raise PipelineError(f"{path}: row {_row(unknown)}: unknown class {values[unknown].iloc[0]!r} in {column}; "
                            f"expected one of {list(spec.classes)}")
    return names


def _from_one_hot(columns: pd.DataFrame, spec: CompetitionSpec, path: Path | str) -> pd.Series:
    values = columns.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isin(values, (0.0, 1.0)).all(axis=1) | (values.sum(axis=1) != 1)
    if bad.any():
        at = int(np.nonzero(bad)[0][0])
        raise PipelineError(f"{path}: row {at + 2}: {dict(columns.iloc[at])}; expected one class column at 1 and "
                            f"the others at 0")
    return pd.Series(np.asarray(spec.classes)[values.argmax(axis=1)], index=columns.index)


def _row(mask: pd.Series) -> int:
    """The CSV line of the first row where ``mask`` holds (line 1 is the header)."""
    return int(np.argmax(mask.to_numpy())) + 2
