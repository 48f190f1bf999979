"""Submission validation refuses what Kaggle would, local scoring matches a hand computation, submit uses the real client."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import responses

from pipeline import submit
from pipeline.competitions import STATE_FARM
from pipeline.errors import PipelineError
from pipeline.submission_format import score, validate_submission
from tests.conftest import put_competition

API = "https://api.kaggle.com/v1/competitions.CompetitionApiService/"
UPLOAD = "https://www.kaggle.com/api/v1/blobs/upload/resumable?token=xyz"
FAKE_KEY = "0123456789abcdef-fake-kaggle-key"
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


@responses.activate
def test_submit_uploads_with_the_real_client_and_a_traceable_message(repo_copy, tiny_competition, monkeypatch,
                                                                     tmp_path, capsys, caplog):
    raw = put_competition(repo_copy, tiny_competition)
    monkeypatch.chdir(repo_copy)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "pipeline-tester")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    sample = pd.read_csv(raw / "sample_submission.csv")
    (repo_copy / "submissions" / "latest.csv").write_text(sample.to_csv(index=False))
    (repo_copy / "metrics" / "submission").mkdir(parents=True)
    (repo_copy / "metrics" / "submission" / "metrics.json").write_text(
        json.dumps({"cv_log_loss": 0.4321, "experiment": "drop03"}))
    responses.add(responses.POST, API + "StartSubmissionUpload", json={"token": "blob-token", "createUrl": UPLOAD},
                  match=[responses.matchers.json_params_matcher(
                      {"competitionName": STATE_FARM.slug, "fileName": "latest.csv"}, strict_match=False)])
    responses.add(responses.PUT, UPLOAD, status=200)
    responses.add(responses.POST, API + "CreateSubmission", json={"message": "Successfully submitted"})
    monkeypatch.setattr("sys.argv", ["submit"])
    caplog.set_level("INFO")
    submit.main()
    assert [c.request.method for c in responses.calls] == ["POST", "PUT", "POST"]
    assert responses.calls[1].request.url == UPLOAD
    created = json.loads(responses.calls[2].request.body)
    assert created["blobFileTokens"] == "blob-token"
    commit = submit._git("rev-parse", "--short", "HEAD")
    assert created["submissionDescription"].startswith(commit) and "drop03 cv=0.4321 latest.csv" in \
        created["submissionDescription"]
    logged = capsys.readouterr()
    assert "Successfully submitted" in caplog.text
    assert FAKE_KEY not in logged.err + logged.out + caplog.text


def test_submit_refuses_an_invalid_file_before_any_upload(repo_copy, tiny_competition, monkeypatch, capsys):
    put_competition(repo_copy, tiny_competition)
    monkeypatch.chdir(repo_copy)
    (repo_copy / "submissions" / "broken.csv").write_text("img,c0\nimg_1.jpg,1\n")
    monkeypatch.setattr("sys.argv", ["submit", "--file", "submissions/broken.csv", "-m", "x"])
    with pytest.raises(SystemExit):
        submit.main()
    assert "submissions/broken.csv: columns" in capsys.readouterr().err
