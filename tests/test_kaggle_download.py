"""The download stage with the real kaggle client, its HTTP answered locally by `responses`.

Kaggle's API answers POST .../competitions.CompetitionApiService/DownloadDataFiles
with a redirect to a signed storage URL; the client follows it and streams the
competition's bundle zip. Here the bundle has State Farm's full image counts
(tiny identical JPEGs), so the official-count check runs for real.
"""
from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import responses
from PIL import Image
from responses import matchers

from pipeline.data.competitions import DOGS_VS_CATS, STATE_FARM
from pipeline.paths import raw_dir
from pipeline.stages import download
from tests.conftest import set_params

API = "https://api.kaggle.com/v1/competitions.CompetitionApiService/DownloadDataFiles"
STORAGE = "https://storage.googleapis.com/kaggle-competitions-data/kaggle-v2/5048/bundle/archive.zip"
FAKE_KEY = "0123456789abcdef-fake-kaggle-key"


def full_size_bundle(path: Path, extra_member: str | None = None) -> bytes:
    """State Farm's bundle layout and counts: imgs.zip nested, 22,424 train and 79,726 test images."""
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 6), (90, 90, 90)).save(jpeg, "JPEG")
    n_train, n_test = STATE_FARM.official_counts["train"], STATE_FARM.official_counts["test"]
    labels = pd.DataFrame({"subject": [f"p{2 + i % 26:03d}" for i in range(n_train)],
                           "classname": [f"c{i % 10}" for i in range(n_train)],
                           "img": [f"img_{i}.jpg" for i in range(n_train)]})
    test_ids = [f"img_{n_train + i}.jpg" for i in range(n_test)]
    images = io.BytesIO()
    with zipfile.ZipFile(images, "w") as archive:
        for row in labels.itertuples():
            archive.writestr(f"train/{row.classname}/{row.img}", jpeg.getvalue())
        for name in test_ids:
            archive.writestr(f"test/{name}", jpeg.getvalue())
    sample = pd.DataFrame({"img": test_ids, **{c: 0.1 for c in STATE_FARM.classes}})
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("imgs.zip", images.getvalue())
        bundle.writestr("driver_imgs_list.csv", labels.to_csv(index=False))
        bundle.writestr("sample_submission.csv", sample.to_csv(index=False))
        if extra_member:
            bundle.writestr(extra_member, b"owned")
    return path.read_bytes()


def dogs_vs_cats_bundle(path: Path) -> bytes:
    """Dogs vs. Cats Redux as Kaggle serves it: train.zip and test.zip nested, 25,000 and 12,500 images."""
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 6), (90, 90, 90)).save(jpeg, "JPEG")
    n_train, n_test = DOGS_VS_CATS.official_counts["train"], DOGS_VS_CATS.official_counts["test"]
    train, test = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(train, "w") as archive:
        for i in range(n_train):
            archive.writestr(f"train/{('cat', 'dog')[i % 2]}.{i // 2}.jpg", jpeg.getvalue())
    with zipfile.ZipFile(test, "w") as archive:
        for i in range(1, n_test + 1):
            archive.writestr(f"test/{i}.jpg", jpeg.getvalue())
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("train.zip", train.getvalue())
        bundle.writestr("test.zip", test.getvalue())
        bundle.writestr("sample_submission.csv", pd.DataFrame({"id": range(1, n_test + 1), "label": 0.5})
                        .to_csv(index=False))
    return path.read_bytes()


@pytest.fixture(scope="module")
def bundle_bytes(tmp_path_factory) -> bytes:
    return full_size_bundle(tmp_path_factory.mktemp("bundle") / "bundle.zip")


@pytest.fixture
def kaggle_repo(repo_copy, monkeypatch, tmp_path) -> Path:
    set_params(repo_copy, data={"source": "kaggle"})
    monkeypatch.chdir(repo_copy)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "pipeline-tester")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    return repo_copy


def serve(bundle: bytes, status: int = 200, slug: str = STATE_FARM.slug) -> None:
    responses.add(responses.POST, API, status=302, headers={"Location": STORAGE + "?X-Goog-Signature=abc"},
                  match=[matchers.json_params_matcher({"competitionName": slug})])
    responses.add(responses.GET, STORAGE, body=bundle, status=status, content_type="application/zip",
                  headers={"Content-Length": str(len(bundle))})


@responses.activate
def test_real_client_downloads_unpacks_and_checks_the_full_competition(kaggle_repo, bundle_bytes, capsys):
    serve(bundle_bytes)
    download.main()
    raw = kaggle_repo / raw_dir(STATE_FARM.slug)
    assert sorted(p.name for p in raw.iterdir()) == ["driver_imgs_list.csv", "imgs.zip", "sample_submission.csv"]
    with zipfile.ZipFile(raw / "imgs.zip") as archive:
        assert len(archive.namelist()) == 22_424 + 79_726
    assert responses.calls[0].request.headers["Authorization"].startswith("Basic ")
    logged = capsys.readouterr()
    assert FAKE_KEY not in logged.out + logged.err
    # Nowhere in the repository: outputs, params, DVC's files.
    assert not any(FAKE_KEY.encode() in p.read_bytes() for p in kaggle_repo.rglob("*") if p.is_file())


@responses.activate
def test_real_client_downloads_dogs_vs_cats_and_keeps_its_two_archives(kaggle_repo, tmp_path, capsys):
    set_params(kaggle_repo, competition=DOGS_VS_CATS.slug)
    serve(dogs_vs_cats_bundle(tmp_path / "dogs.zip"), slug=DOGS_VS_CATS.slug)
    download.main()
    raw = kaggle_repo / raw_dir(DOGS_VS_CATS.slug)
    assert sorted(p.name for p in raw.iterdir()) == ["sample_submission.csv", "test.zip", "train.zip"]
    with zipfile.ZipFile(raw / "train.zip") as train, zipfile.ZipFile(raw / "test.zip") as test:
        assert (len(train.namelist()), len(test.namelist())) == (25_000, 12_500)
    logged = capsys.readouterr()
    assert FAKE_KEY not in logged.out + logged.err
    assert not any(FAKE_KEY.encode() in p.read_bytes() for p in kaggle_repo.rglob("*") if p.is_file())


@responses.activate
def test_a_bundle_member_that_escapes_is_refused_and_nothing_is_written(kaggle_repo, tmp_path, capsys):
    serve(full_size_bundle(tmp_path / "evil.zip", extra_member="../../escaped.txt"))
    with pytest.raises(SystemExit) as exit_:
        download.main()
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "'../../escaped.txt' would escape the target folder" in error[0]
    assert not (kaggle_repo / raw_dir(STATE_FARM.slug)).exists()
    assert not list(kaggle_repo.rglob("escaped.txt")) and not list(tmp_path.rglob("escaped.txt"))
    assert not list((kaggle_repo / "data" / "raw").iterdir())


@responses.activate
def test_kaggle_refusing_access_is_one_line_about_the_rules(kaggle_repo, capsys):
    responses.add(responses.POST, API, status=403, json={"code": 403, "message": "You must accept the rules"})
    with pytest.raises(SystemExit):
        download.main()
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "HTTP 403" in error and "/rules" in error and FAKE_KEY not in error


def test_missing_credentials_is_one_line_saying_how_to_set_them(repo_copy, tmp_path):
    set_params(repo_copy, data={"source": "kaggle"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["HOME"] = str(tmp_path / "empty-home")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = __import__("subprocess").run([sys.executable, "-m", "pipeline.stages.download"], cwd=repo_copy, env=env,
                                          capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "KAGGLE_USERNAME and KAGGLE_KEY" in lines[0] and "kaggle.json" in lines[0]


@responses.activate
def test_a_kaggle_download_short_of_the_official_counts_is_an_error(kaggle_repo, tiny_competition, tmp_path, capsys):
    bundle = tmp_path / "short.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        for name in ("imgs.zip", "driver_imgs_list.csv", "sample_submission.csv"):
            archive.write(tiny_competition / name, name)
    serve(bundle.read_bytes())
    with pytest.raises(SystemExit) as exit_:
        download.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert lines[0].endswith("found 100 train and 40 test images; Kaggle serves 22424 and 79726; the download is "
                             "incomplete, run it again")
    assert not (kaggle_repo / raw_dir(STATE_FARM.slug)).exists()
