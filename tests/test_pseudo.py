"""Pseudo-labels without leaks: a fold's student learns only from the teacher that never saw that fold (its
probabilities for the test images and for the fold's images, never the fold's labels); fine-tuned embeddings as the
ensemble's neighbour space; the student's predictions enter the ensemble like any model's."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys

import pandas as pd
import pytest
from sklearn.metrics import log_loss

from pipeline.data.competitions import STATE_FARM
from pipeline.data.predictions import read_table
from pipeline.paths import fold_dir
from tests.conftest import make_repo, put_competition, run, run_stage_in, set_params

pytestmark = pytest.mark.slow  # end to end: stages as subprocesses

MODEL = "net"
FOLDS = (0, 1)  # two folds are enough to mix up a teacher, and keep the suite fast


@pytest.fixture(scope="module")
def first_round(tmp_path_factory, tiny_competition):
    """A repository with folds and every fold of the first fine-tuning round done."""
    repo = make_repo(tmp_path_factory.mktemp("pseudo") / "repo")
    put_competition(repo, tiny_competition)
    set_params(repo, folds={"n_splits": len(FOLDS)}, finetune={"folds": list(FOLDS)},
               pseudo={"models": [MODEL], "threshold": 0.0})
    for stage in (["folds"], *(["finetune", MODEL, "--fold", str(k)] for k in FOLDS)):
        status, lines = run_stage_in(repo, *stage)
        assert status == 0, lines
    return repo


@pytest.fixture(scope="module")
def second_round(first_round, tmp_path_factory):
    """The same repository after a student per fold."""
    repo = tmp_path_factory.mktemp("students") / "repo"
    shutil.copytree(first_round, repo, symlinks=True)
    run([sys.executable, "-m", "pipeline.stages.pseudo", MODEL, "--fold", str(FOLDS[0])], repo)  # the command line
    for fold in FOLDS[1:]:
        status, lines = run_stage_in(repo, "pseudo", MODEL, "--fold", str(fold))
        assert status == 0, lines
    return repo


def _ids(path) -> set[str]:
    return set(pd.read_csv(path, dtype={"img": str}).img)


def test_no_students_teacher_saw_the_students_validation_fold(second_round):
    repo = second_round
    folds = pd.read_csv(repo / "data" / "folds" / STATE_FARM.slug / "folds.csv", dtype={"img": str})
    for fold in FOLDS:
        student = repo / fold_dir(STATE_FARM.slug, f"pseudo-{MODEL}", fold)
        validation = _ids(student / "oof.csv")
        teacher = json.loads((student / "teacher.json").read_text())
        # What each net trained on, as its run recorded it (trained_on.csv), not as the fold table implies.
        teacher_trained_on = pd.read_csv(repo / teacher["teacher"] / "trained_on.csv", dtype={"img": str})
        assert set(teacher_trained_on.targets) == {"labelled"} and len(teacher_trained_on) > 0
        assert set(teacher_trained_on.img).isdisjoint(validation), f"fold {fold}: the teacher saw the validation"
        assert validation == set(folds.img[folds.fold == fold])
        student_trained_on = pd.read_csv(student / "trained_on.csv", dtype={"img": str})
        pseudo = student_trained_on[student_trained_on.targets == "pseudo"]
        assert set(student_trained_on.img[student_trained_on.targets == "labelled"]) == set(teacher_trained_on.img)
        # The pseudo-labelled images: the test images and the student's own validation fold, each once, with the
        # labels of the teacher that never saw that fold (its oof.csv), so the fold is scored as the test is.
        assert len(pseudo) == len(set(pseudo.img)) == teacher["pseudo_labelled"] + teacher["pseudo_labelled_held_out"]
        assert teacher["pseudo_labelled"] == teacher["test_images"] == 40
        assert set(pseudo.img) == _ids(student / "test.csv") | validation
        teacher_oof = (repo / teacher["teacher"] / "oof.csv").read_bytes()
        assert teacher["teacher_oof_sha256"] == hashlib.sha256(teacher_oof).hexdigest()


def test_a_teacher_that_held_out_another_fold_is_refused(first_round, tmp_path, run_stage):
    repo = tmp_path / "repo"
    shutil.copytree(first_round, repo, symlinks=True)
    teacher = repo / fold_dir(STATE_FARM.slug, f"finetune-{MODEL}", 0)
    shutil.rmtree(teacher)
    shutil.copytree(repo / fold_dir(STATE_FARM.slug, f"finetune-{MODEL}", 1), teacher)  # a mixed-up teacher
    status, lines = run_stage(repo, "pseudo", MODEL, "--fold", "0")
    assert status == 2 and lines == [f"error: {teacher.relative_to(repo)}/oof.csv: the teacher did not hold out "
                                     f"exactly fold 0; a student may only learn from the teacher that never saw "
                                     f"its validation fold"]


def test_students_and_fine_tuned_embeddings_enter_the_ensemble(second_round, tmp_path, run_stage):
    repo = tmp_path / "repo"
    shutil.copytree(second_round, repo, symlinks=True)
    set_params(repo, ensemble={"models": [f"finetune-{MODEL}", f"pseudo-{MODEL}"], "neighbours": [1, 3],
                               "neighbour_features": [f"finetune-{MODEL}"]})
    status, lines = run_stage(repo, "ensemble")
    assert status == 0, lines
    recipe = json.loads((repo / "data" / "ensemble" / STATE_FARM.slug / "blend.json").read_text())
    assert recipe["models"] == [f"finetune-{MODEL}", f"pseudo-{MODEL}"] and len(recipe["weights"]) == 2
    assert sum(recipe["weights"]) == pytest.approx(1) and recipe["neighbour_features"] == f"finetune-{MODEL}"
    metrics = json.loads((repo / "metrics" / "ensemble" / "metrics.json").read_text())
    assert {"blend_probability/cv_log_loss", "blend_log/cv_log_loss"} <= set(metrics)
    # Each figure is the log loss of the predictions written beside it: the student's folds, the nested blend.
    folds = pd.read_csv(repo / "data" / "folds" / STATE_FARM.slug / "folds.csv", dtype={"img": str}).set_index("img")
    for name, table in ((f"pseudo-{MODEL}/cv_log_loss", pd.concat(
            read_table(repo / fold_dir(STATE_FARM.slug, f"pseudo-{MODEL}", k) / "oof.csv", STATE_FARM.classes)
            for k in FOLDS)), ("cv_log_loss", read_table(repo / "data" / "ensemble" / STATE_FARM.slug / "oof.csv",
                                                         STATE_FARM.classes))):
        truth = folds.label.loc[table.index].map(STATE_FARM.classes.index)
        proba = table.to_numpy() / table.to_numpy().sum(1, keepdims=True)  # as written: rounded to the CSV's digits
        assert metrics[name] == pytest.approx(log_loss(truth, proba, labels=range(10)), abs=1e-4), name
