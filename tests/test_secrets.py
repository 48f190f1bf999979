"""Kaggle credentials never leave where the user put them: not in logs, metrics, params, DVC files or errors.

A fake key is planted everywhere the kaggle client reads credentials (environment
and ``~/.kaggle/kaggle.json``); then every output and message is searched for it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import responses

from pipeline.errors import PipelineError
from pipeline.kaggle.client import download_competition, submit_file
from pipeline.stages import download
from tests.conftest import set_params

FAKE_KEY = "0123456789abcdef-fake-kaggle-key"
API = "https://api.kaggle.com/v1/competitions.CompetitionApiService/"
SLUG = "state-farm-distracted-driver-detection"


def _credentials(home: Path) -> dict[str, str]:
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "pipeline-tester", "key": FAKE_KEY}))
    return {"HOME": str(home), "KAGGLE_USERNAME": "pipeline-tester", "KAGGLE_KEY": FAKE_KEY}


def _files_holding_the_key(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]


@pytest.fixture
def kaggle_env(repo_copy, tmp_path, monkeypatch) -> Path:
    for key, value in _credentials(tmp_path / "home").items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(repo_copy)
    set_params(repo_copy, data={"source": "kaggle"})
    return repo_copy


@responses.activate
@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_kaggle_refusals_are_one_line_without_the_key(kaggle_env, capsys, status):
    responses.add(responses.POST, API + "DownloadDataFiles", status=status,
                  json={"code": status, "message": f"bad key {FAKE_KEY}"})  # even when the server echoes it
    with pytest.raises(SystemExit):
        download.main()
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"HTTP {status}" in error and FAKE_KEY not in error
    assert _files_holding_the_key(kaggle_env) == []


@responses.activate
def test_an_exception_that_carries_the_key_is_not_repeated(kaggle_env):
    responses.add(responses.POST, API + "DownloadDataFiles",
                  body=requests.ConnectionError(f"HTTPSConnectionPool: auth {FAKE_KEY} refused"))
    with pytest.raises(PipelineError) as error:
        download_competition(SLUG, kaggle_env)
    assert "no network connection" in str(error.value) and FAKE_KEY not in str(error.value)
    responses.add(responses.POST, API + "StartSubmissionUpload",
                  body=requests.HTTPError(f"403 for https://www.kaggle.com/?key={FAKE_KEY}"))
    csv = kaggle_env / "submission.csv"
    csv.write_text("img,c0\n")
    with pytest.raises(PipelineError) as error:
        submit_file(SLUG, csv, "message")
    assert FAKE_KEY not in str(error.value)
