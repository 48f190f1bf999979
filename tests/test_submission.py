"""Submission validation refuses what Kaggle would, local scoring matches a hand computation, submit uses the real client."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import responses

from pipeline import leaderboard, submit
from pipeline.competitions import STATE_FARM
from pipeline.errors import PipelineError
from pipeline.paths import ensemble_dir, raw_dir
from pipeline.submission_format import score, validate_submission
from tests.conftest import GIT_IDENTITY, put_competition, run

API = "https://api.kaggle.com/v1/competitions.CompetitionApiService/"
UPLOAD = "https://www.kaggle.com/api/v1/blobs/upload/resumable?token=xyz"
FAKE_KEY = "0123456789abcdef-fake-kaggle-key"
DVC = [sys.executable, "-m", "dvc"]
CLASSES = list(STATE_FARM.classes)


def _frame(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"img": ids, **{c: 0.1 for c in CLASSES}})


@pytest.mark.parametrize("break_it, message", [
    (lambda t: t.iloc[1:], r"1 test image\(s\) missing, e.g. 'a.jpg'"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "image 'a.jpg' appears more than once"),
    (lambda t: t.assign(c3=np.nan), "non-finite probabilities in row 0"),
    (lambda t: t.assign(c0=0.5), "sums to 1.4000, not 1"),
    (lambda t: t.assign(c0=-0.1, c1=0.3), r"outside \[0, 1\]"),
    (lambda t: t.rename(columns={"img": "id"}), "columns"),
    (lambda t: t.assign(img=["a.jpg", "z.jpg", "c.jpg"]), r"1 test image\(s\) missing, e.g. 'b.jpg'"),
    (lambda t: pd.concat([t, t.iloc[:1].assign(img="z.jpg")]), r"1 image\(s\) not in the sample submission, e.g. 'z.jpg'"),
])
def test_a_broken_submission_frame_is_refused_with_one_line(break_it, message):
    sample = _frame(["a.jpg", "b.jpg", "c.jpg"])
    validate_submission(sample, sample, STATE_FARM, "sub.csv")
    with pytest.raises(PipelineError, match=message):
        validate_submission(break_it(sample.copy()), sample, STATE_FARM, "sub.csv")


def test_local_scoring_splits_public_and_private_like_kaggle():
    table = _frame(["a.jpg", "b.jpg", "c.jpg"])
    table.loc[0, CLASSES] = [0.8] + [0.2 / 9] * 9  # a is c0
    solution = pd.DataFrame({"img": ["a.jpg", "b.jpg", "c.jpg"], "classname": ["c0", "c1", "c2"],
                             "Usage": ["Public", "Private", "Private"]})
    scores = score(table, solution, STATE_FARM)
    assert scores["public_log_loss"] == pytest.approx(-math.log(0.8))
    assert scores["private_log_loss"] == pytest.approx(-math.log(0.1))
    assert scores["leaderboard_log_loss"] == pytest.approx((-math.log(0.8) - 2 * math.log(0.1)) / 3)


def _kaggle(repo, monkeypatch, tmp_path, experiment: str = "drop03", save: bool = True):
    """``repo`` as after `dvc exp run -n <experiment>`: a submission and its metrics in the workspace, saved as that
    experiment (``save``); Kaggle credentials in the environment, none on disk."""
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "pipeline-tester")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    sample = pd.read_csv(repo / raw_dir(STATE_FARM.slug) / "sample_submission.csv")
    (repo / "submissions" / "latest.csv").write_text(sample.to_csv(index=False))
    (repo / ensemble_dir(STATE_FARM.slug)).mkdir(parents=True)  # what the submission stage was made from
    (repo / ensemble_dir(STATE_FARM.slug) / "test.csv").write_text(sample.to_csv(index=False))
    for stage in ("ensemble", "submission"):
        (repo / "metrics" / stage).mkdir(parents=True)
        (repo / "metrics" / stage / "metrics.json").write_text(json.dumps({"cv_log_loss": 0.5}))
    run(["git", "add", "metrics"], repo)
    run(["git", "commit", "-qm", "the baseline's metrics, committed with its dvc.lock"], repo)
    (repo / "metrics" / "submission" / "metrics.json").write_text(
        json.dumps({"cv_log_loss": 0.4321, "experiment": experiment}))
    if save:
        run(DVC + ["exp", "save", "-n", experiment, "submission"], repo)


def _upload(create_status: int = 200) -> None:
    responses.add(responses.POST, API + "StartSubmissionUpload", json={"token": "blob-token", "createUrl": UPLOAD},
                  match=[responses.matchers.json_params_matcher(
                      {"competitionName": STATE_FARM.slug, "fileName": "latest.csv"}, strict_match=False)])
    responses.add(responses.PUT, UPLOAD, status=200)
    responses.add(responses.POST, API + "CreateSubmission", json={"message": "Successfully submitted"},
                  status=create_status)


def _leaderboard(*states: tuple[str, str]) -> None:
    """Kaggle's ListSubmissions answering with the submission just created, in each of ``states`` (status, public
    score) in turn, the last one for good."""
    answers = iter(states)
    last = [states[-1]]

    def listing(request):
        created = next(c for c in responses.calls if c.request.url.endswith("CreateSubmission"))
        status, public = last[0] = next(answers, last[0])
        row = {"ref": 41, "status": status, "description": json.loads(created.request.body)["submissionDescription"],
               "fileName": "latest.csv", "date": "2026-11-29T20:00:00Z", "publicScore": public,
               "errorDescription": "Submission file has 79726 rows, expected 79727" if status == "ERROR" else ""}
        older = [{"ref": 17, "status": "COMPLETE", "description": description, "fileName": "latest.csv",
                  "date": f"2026-11-{day}T09:00:00Z", "publicScore": public}
                 for day, description, public in (("28", "a1b2c3d base cv=0.5100 latest.csv", "0.48710"),
                                                  ("27", "b2c3d4e cv=0.6000 latest.csv", "0.58000"),  # no experiment
                                                  ("26", "my first try by hand", "0.90000"))]  # no CV: left out
        return 200, {}, json.dumps({"submissions": [row, *older]})

    responses.add_callback(responses.POST, API + "ListSubmissions", callback=listing)


@responses.activate
def test_submit_uploads_waits_for_the_score_and_saves_it_with_the_experiment(repo_copy, tiny_competition,
                                                                           monkeypatch, tmp_path, capsys, caplog):
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path)
    _upload()
    _leaderboard(("PENDING", ""), ("PENDING", ""), ("COMPLETE", "0.45670"))
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01"])
    caplog.set_level("INFO")
    submit.main()
    methods = [c.request.method for c in responses.calls]
    assert methods[:3] == ["POST", "PUT", "POST"] and responses.calls[1].request.url == UPLOAD
    created = json.loads(responses.calls[2].request.body)
    assert created["blobFileTokens"] == "blob-token"
    commit = submit._git("rev-parse", "--short", "HEAD")
    message = created["submissionDescription"]
    assert message.startswith(commit) and "drop03 cv=0.4321 latest.csv" in message
    assert sum(c.request.url.endswith("ListSubmissions") for c in responses.calls) == 3  # until it was scored
    recorded = json.loads((repo_copy / "metrics" / "leaderboard" / "metrics.json").read_text())
    assert recorded["lb_public"] == 0.4567 and recorded["status"] == "complete" and recorded["message"] == message
    assert "lb_private" not in recorded  # the competition has not closed
    # The experiment that made the file now carries its leaderboard score beside its CV.
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo_copy).stdout)
    [experiment] = [e for commit_ in table for e in (commit_.get("experiments") or []) if e.get("name") == "drop03"]
    metrics = experiment["revs"][0]["data"]["metrics"]
    assert metrics["metrics/leaderboard/metrics.json"]["data"]["lb_public"] == 0.4567
    assert metrics["metrics/submission/metrics.json"]["data"]["cv_log_loss"] == 0.4321
    logged = capsys.readouterr()
    assert "Successfully submitted" in caplog.text and "public leaderboard 0.4567" in caplog.text
    assert FAKE_KEY not in logged.err + logged.out + caplog.text

    # Every submission of the competition, CV against leaderboard, for `dvc plots show`.
    monkeypatch.setattr("sys.argv", ["leaderboard"])
    leaderboard.main()
    points = json.loads((repo_copy / "metrics" / "leaderboard" / "submissions.json").read_text())
    assert [(p["experiment"], p["cv_log_loss"], p["lb_public"]) for p in points] == \
        [("", 0.6, 0.58), ("base", 0.51, 0.4871), ("drop03", 0.4321, 0.4567)]  # oldest first
    assert "CV against the public leaderboard" in run(DVC + ["plots", "show", "--json"], repo_copy).stdout


@pytest.mark.parametrize("failure, message", [
    ("no credentials", "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY"),
    ("rejected", "Kaggle refused to submit to state-farm-distracted-driver-detection: HTTPError (HTTP 400)"),
    ("scoring error", "Kaggle could not score latest.csv: Submission file has 79726 rows, expected 79727"),
    ("timeout", "Kaggle has not scored latest.csv after 0 s; `python -m pipeline.leaderboard` records the score"),
])
@responses.activate
def test_a_failed_submission_or_score_is_one_line_and_leaves_the_other_metrics(repo_copy, tiny_competition,
                                                                            monkeypatch, tmp_path, capsys,
                                                                            failure, message):
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path, save=False)  # every failure comes before the experiment is saved
    before = (repo_copy / "metrics" / "submission" / "metrics.json").read_bytes()
    recorded = repo_copy / "metrics" / "leaderboard" / "metrics.json"
    empty = recorded.read_bytes()  # as a fresh clone has it: {}
    if failure == "no credentials":
        monkeypatch.delenv("KAGGLE_USERNAME")
        monkeypatch.delenv("KAGGLE_KEY")
    _upload(create_status=400 if failure == "rejected" else 200)
    _leaderboard(("ERROR", "") if failure == "scoring error" else ("PENDING", ""))
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01", "--wait", "0.05" if failure == "timeout" else "5"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        submit.main()
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and message in errors[0], lines
    assert FAKE_KEY not in "\n".join(lines)
    assert (repo_copy / "metrics" / "submission" / "metrics.json").read_bytes() == before
    if failure in ("no credentials", "rejected"):
        assert recorded.read_bytes() == empty  # nothing reached Kaggle
    else:
        assert "lb_public" not in json.loads(recorded.read_text())  # pending, or Kaggle's error: no score


def test_submit_refuses_an_invalid_file_before_any_upload(repo_copy, tiny_competition, monkeypatch, capsys):
    put_competition(repo_copy, tiny_competition)
    monkeypatch.chdir(repo_copy)
    (repo_copy / "submissions" / "broken.csv").write_text("img,c0\nimg_1.jpg,1\n")
    monkeypatch.setattr("sys.argv", ["submit", "--file", "submissions/broken.csv", "-m", "x"])
    with pytest.raises(SystemExit):
        submit.main()
    assert "submissions/broken.csv: columns" in capsys.readouterr().err
