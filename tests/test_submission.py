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
from pipeline.data.competitions import STATE_FARM
from pipeline.data.solution import solution_labels
from pipeline.ensemble.submission_format import file_sha256, score, validate_submission
from pipeline.errors import PipelineError
from pipeline.kaggle import submissions
from pipeline.paths import ensemble_dir, raw_dir
from tests.conftest import GIT_IDENTITY, put_competition, run, set_params

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
    scores = score(table, solution_labels(solution, STATE_FARM), STATE_FARM)
    assert scores["public_log_loss"] == pytest.approx(-math.log(0.8))
    assert scores["private_log_loss"] == pytest.approx(-math.log(0.1))
    assert scores["leaderboard_log_loss"] == pytest.approx((-math.log(0.8) - 2 * math.log(0.1)) / 3)


MADE = f"{STATE_FARM.slug}-0ed37b6d.csv"  # the content-named file the submission stage wrote beside latest.csv


def _kaggle(repo, monkeypatch, tmp_path, experiment: str = "drop03", save: bool = True):
    """``repo`` as after `dvc exp run -n <experiment>`: a submission and its metrics in the workspace (with the file's
    SHA-256, as the submission stage records it), saved as that experiment (``save``); Kaggle credentials in the
    environment, none on disk."""
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "pipeline-tester")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    sample = pd.read_csv(repo / raw_dir(STATE_FARM.slug) / "sample_submission.csv")
    latest = repo / "submissions" / "latest.csv"
    latest.write_text(sample.to_csv(index=False))
    (repo / ensemble_dir(STATE_FARM.slug)).mkdir(parents=True)  # what the submission stage was made from
    (repo / ensemble_dir(STATE_FARM.slug) / "test.csv").write_text(sample.to_csv(index=False))
    for stage in ("ensemble", "submission"):
        (repo / "metrics" / stage).mkdir(parents=True)
        (repo / "metrics" / stage / "metrics.json").write_text(json.dumps({"cv_log_loss": 0.5}))
    run(["git", "add", "metrics"], repo)
    run(["git", "commit", "-qm", "the baseline's metrics, committed with its dvc.lock"], repo)
    (repo / "metrics" / "submission" / "metrics.json").write_text(json.dumps(
        {"cv_log_loss": 0.4321, "experiment": experiment, "file": MADE, "sha256": file_sha256(latest)}))
    if save:
        run(DVC + ["exp", "save", "-n", experiment, "submission"], repo)


def _upload(create_status: int = 200, create_body: dict | None = None, notebooks_only: bool = False,
            ref: int = 41) -> None:
    """Kaggle's answers to a CSV submission: the competition's settings, the blob upload, the create call (which
    returns the new submission's reference)."""
    responses.add(responses.POST, API + "GetCompetition", json={"ref": STATE_FARM.slug,
                                                               "isKernelsSubmissionsOnly": notebooks_only})
    responses.add(responses.POST, API + "StartSubmissionUpload", json={"token": "blob-token", "createUrl": UPLOAD},
                  match=[responses.matchers.json_params_matcher(
                      {"competitionName": STATE_FARM.slug, "fileName": "latest.csv"}, strict_match=False)])
    responses.add(responses.PUT, UPLOAD, status=200)
    responses.add(responses.POST, API + "CreateSubmission",
                  json=create_body or {"message": "Successfully submitted", "ref": ref}, status=create_status)


def _row(ref: int, status: str, public: str, description: str, day: str = "29") -> dict:
    return {"ref": ref, "status": status, "description": description, "fileName": "latest.csv",
            "date": f"2026-11-{day}T20:00:00Z", "publicScore": public,
            "errorDescription": "Submission file has 79726 rows, expected 79727" if status == "ERROR" else ""}


def _created_message() -> str:
    created = next(c for c in responses.calls if c.request.url.endswith("CreateSubmission"))
    return json.loads(created.request.body)["submissionDescription"]


def _scoring(*states: tuple[str, str], ref: int = 41, throttled: int = 0) -> None:
    """Kaggle's GetSubmission answering for submission ``ref`` in each of ``states`` (status, public score) in
    turn, the last one for good, after ``throttled`` answers of HTTP 429; and ListSubmissions listing it above
    older submissions."""
    answers, last, refusals = iter(states), [states[-1]], [throttled]

    def one(request):
        if refusals[0]:
            refusals[0] -= 1
            return 429, {"Retry-After": "0"}, json.dumps({"message": "Too many requests"})
        assert json.loads(request.body)["ref"] == ref
        status, public = last[0] = next(answers, last[0])
        return 200, {}, json.dumps(_row(ref, status, public, _created_message()))

    def listing(request):
        older = [_row(17, "COMPLETE", public, description, day)
                 for day, description, public in (("28", "a1b2c3d base cv=0.5100 latest.csv", "0.48710"),
                                                  ("27", "b2c3d4e cv=0.6000 latest.csv", "0.58000"),  # no experiment
                                                  ("26", "my first try by hand", "0.90000"))]  # no CV: left out
        return 200, {}, json.dumps({"submissions": [_row(ref, *last[0], _created_message()), *older]})

    responses.add_callback(responses.POST, API + "GetSubmission", callback=one)
    responses.add_callback(responses.POST, API + "ListSubmissions", callback=listing)


@responses.activate
def test_submit_uploads_waits_for_the_score_and_saves_it_with_the_experiment(repo_copy, tiny_competition,
                                                                           monkeypatch, tmp_path, capsys, caplog):
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path)
    _upload()
    _scoring(("PENDING", ""), ("PENDING", ""), ("COMPLETE", "0.45670"))
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01"])
    caplog.set_level("INFO")
    submit.main()
    methods = [c.request.method for c in responses.calls]
    assert methods[:4] == ["POST", "POST", "PUT", "POST"] and responses.calls[2].request.url == UPLOAD
    created = json.loads(responses.calls[3].request.body)
    assert created["blobFileTokens"] == "blob-token"
    commit = submissions.git_output("rev-parse", "--short", "HEAD")
    message = created["submissionDescription"]
    assert message.startswith(commit) and f"drop03 cv=0.4321 {MADE}" in message
    assert sum(c.request.url.endswith("GetSubmission") for c in responses.calls) == 3  # until it was scored
    recorded = json.loads((repo_copy / "metrics" / "leaderboard" / "metrics.json").read_text())
    assert recorded["lb_public"] == 0.4567 and recorded["status"] == "complete" and recorded["message"] == message
    assert recorded["submission"] == 41 and recorded["file"] == MADE
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
    assert [(p["experiment"], p["cv"], p["lb_public"]) for p in points] == \
        [("", 0.6, 0.58), ("base", 0.51, 0.4871), ("drop03", 0.4321, 0.4567)]  # oldest first
    assert {p["metric"] for p in points} == {"multiclass_log_loss (lower is better)"}  # the plot says which way is up
    assert "CV against the public leaderboard" in run(DVC + ["plots", "show", "--json"], repo_copy).stdout


@pytest.mark.parametrize("failure, message", [
    ("no credentials", "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY"),
    ("rejected", "Kaggle refused to submit to state-farm-distracted-driver-detection: HTTPError (HTTP 400)"),
    ("scoring error", "Kaggle could not score latest.csv: Submission file has 79726 rows, expected 79727"),
    ("timeout", "Kaggle has not scored latest.csv after 0 s (submission 41); `python -m pipeline.leaderboard` "
                "records the score"),
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
    _scoring(("ERROR", "") if failure == "scoring error" else ("PENDING", ""))
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01", "--wait", "0.05" if failure == "timeout" else "5"])
    capsys.readouterr()
    lines = _refused(capsys)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], lines
    assert FAKE_KEY not in "\n".join(lines)
    assert (repo_copy / "metrics" / "submission" / "metrics.json").read_bytes() == before
    if failure in ("no credentials", "rejected"):
        assert recorded.read_bytes() == empty  # nothing reached Kaggle
    else:
        assert "lb_public" not in json.loads(recorded.read_text())  # pending, or Kaggle's error: no score


def _refused(capsys) -> list[str]:
    """submit.main()'s stderr lines, once it has exited with status 2."""
    with pytest.raises(SystemExit) as exit_:
        submit.main()
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def _uploads() -> list[str]:
    return [c.request.url for c in responses.calls if "Upload" in c.request.url or c.request.method == "PUT"]


@pytest.mark.parametrize("left_there", ["older file", "sample run"])
@responses.activate
def test_submit_refuses_a_file_the_experiment_did_not_make_before_any_call(repo_copy, tiny_competition, monkeypatch,
                                                                          tmp_path, capsys, left_there):
    """latest.csv left by an earlier run (a data.sample run writes none; `dvc exp apply` restores the metrics, not the
    uncached file) would go up under this experiment's CV: refused, unless named as a file of no experiment."""
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path, save=False)
    metrics = repo_copy / "metrics" / "submission" / "metrics.json"
    if left_there == "older file":
        latest = repo_copy / "submissions" / "latest.csv"
        older = pd.read_csv(latest)
        older[CLASSES] = np.eye(10)[np.arange(len(older)) % 10] * 0.9 + 0.01  # another, valid, prediction
        older.to_csv(latest, index=False)
    else:
        metrics.write_text(json.dumps({"cv_log_loss": 0.61, "experiment": "quick", "file": "", "sha256": ""}))
    _upload()
    _scoring(("COMPLETE", "0.70000"))
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01"])
    [line] = _refused(capsys)
    assert line.startswith("error: submissions/latest.csv: not the file this workspace's run made") and \
        "--message" in line, line
    assert len(responses.calls) == 0  # nothing asked of Kaggle

    # Named by the user, it goes up as a file of no experiment: shown, saved with none.
    recorded = repo_copy / "metrics" / "leaderboard" / "metrics.json"
    empty, described = recorded.read_bytes(), metrics.read_bytes()
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01", "-m", "an old file, by hand"])
    submit.main()
    assert _created_message() == "an old file, by hand" and len(_uploads()) == 2
    assert recorded.read_bytes() == empty and metrics.read_bytes() == described


@responses.activate
def test_the_wait_follows_the_reference_kaggle_returned_not_the_message(repo_copy, tiny_competition, monkeypatch,
                                                                      tmp_path):
    """A resubmission repeats its message: the older submission with the same message, scored long ago, must not be
    taken for the new one."""
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path)
    _upload(ref=42)
    scored_before = {"ref": 41, "status": "COMPLETE", "publicScore": "0.99990"}
    answers = iter([("PENDING", ""), ("COMPLETE", "0.45670")])

    def by_ref(request):
        asked = json.loads(request.body)["ref"]
        if asked == 41:
            return 200, {}, json.dumps(_row(41, "COMPLETE", scored_before["publicScore"], _created_message(), "28"))
        return 200, {}, json.dumps(_row(42, *next(answers), _created_message()))

    responses.add_callback(responses.POST, API + "GetSubmission", callback=by_ref)
    responses.add(responses.POST, API + "ListSubmissions", json={"submissions": []})  # as if not listed yet
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01"])
    submit.main()
    recorded = json.loads((repo_copy / "metrics" / "leaderboard" / "metrics.json").read_text())
    assert (recorded["submission"], recorded["lb_public"]) == (42, 0.4567)
    asked = [json.loads(c.request.body)["ref"] for c in responses.calls if c.request.url.endswith("GetSubmission")]
    assert asked == [42, 42]


@responses.activate
def test_kaggle_saying_too_many_requests_is_waited_out(repo_copy, tiny_competition, monkeypatch, tmp_path, caplog):
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path)
    _upload()
    _scoring(("COMPLETE", "0.45670"), throttled=3)
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01"])
    caplog.set_level("INFO")
    submit.main()
    assert json.loads((repo_copy / "metrics" / "leaderboard" / "metrics.json").read_text())["lb_public"] == 0.4567
    assert caplog.text.count("too many requests (HTTP 429)") == 3


@responses.activate
def test_kaggles_own_reason_for_a_refusal_is_shown_without_urls_or_tokens(repo_copy, tiny_competition, monkeypatch,
                                                                        tmp_path, capsys):
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path, save=False)
    signed = ("https://storage.googleapis.com/kaggle-competitions-submissions/upload?X-Goog-Signature="
              "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928")
    _upload(create_status=400, create_body={"code": 400, "message": f"Your team has used its 5 submissions today; try "
                                                                    f"again in 3 hours. Upload was {signed} with "
                                                                    f"token blob-token-{FAKE_KEY}{FAKE_KEY}"})
    monkeypatch.setattr("sys.argv", ["submit", "--poll", "0.01"])
    [line] = _refused(capsys)
    assert "(HTTP 400): Kaggle says 'Your team has used its 5 submissions today; try again in 3 hours." in line
    assert "X-Goog-Signature" not in line and "storage.googleapis" not in line and FAKE_KEY not in line


@responses.activate
def test_a_notebook_only_competition_refuses_a_csv_before_the_upload(repo_copy, tiny_competition, monkeypatch,
                                                                    tmp_path, capsys):
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path, save=False)
    _upload(notebooks_only=True)
    monkeypatch.setattr("sys.argv", ["submit"])
    [line] = _refused(capsys)
    assert "accepts only notebooks" in line and "python -m pipeline.kernel push" in line
    assert _uploads() == []


@responses.activate
def test_own_data_is_refused_before_any_network_call(repo_copy, tiny_competition, monkeypatch, tmp_path, capsys):
    put_competition(repo_copy, tiny_competition, frames=False)
    _kaggle(repo_copy, monkeypatch, tmp_path, save=False)
    set_params(repo_copy, competition="own-data")
    monkeypatch.setattr("sys.argv", ["submit"])
    [line] = _refused(capsys)
    assert line == ("error: params.yaml: competition: own-data is not a Kaggle competition, there is nothing to submit "
                    "to; its local scores are in metrics/submission/metrics.json")
    assert len(responses.calls) == 0


def test_submit_refuses_an_invalid_file_before_any_upload(repo_copy, tiny_competition, monkeypatch, capsys):
    put_competition(repo_copy, tiny_competition)
    monkeypatch.chdir(repo_copy)
    (repo_copy / "submissions" / "broken.csv").write_text("img,c0\nimg_1.jpg,1\n")
    monkeypatch.setattr("sys.argv", ["submit", "--file", "submissions/broken.csv", "-m", "x"])
    with pytest.raises(SystemExit):
        submit.main()
    assert "submissions/broken.csv: columns" in capsys.readouterr().err
