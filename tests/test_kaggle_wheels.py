"""The wheels a training notebook installs: a set for each CPython Kaggle's image may have (3.11 until December
2025, 3.12 since), checked offline with pip's own resolver against a wheelhouse shaped like PyPI (compiled wheels per
CPython, pure ones once), and chosen in the notebook by the Python it runs on."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.kaggle.notebook import wheels_for
from pipeline.kaggle.wheels import (PLATFORMS, PYTHONS, image_carries, image_python, packages_to_ship, python_tag,
                                    ship_wheels)

COMPILED = {"orjson", "pygit2", "dulwich"}  # shipped, and compiled per CPython on PyPI


def fake_wheel(folder: Path, name: str, version: str, tag: str) -> None:
    """A wheel pip reads as ``name==version`` for ``tag`` (metadata only)."""
    stem = name.replace("-", "_")
    info = f"{stem}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{stem}-{version}-{tag}.whl", "w") as wheel:
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """What PyPI holds of every shipped package: a wheel per CPython for the compiled ones, one pure wheel else."""
    folder = tmp_path_factory.mktemp("pypi")
    for requirement in sorted({r for python in PYTHONS for r in packages_to_ship(python)}):
        name, version = requirement.split("==")
        tags = [f"cp{t}-cp{t}-manylinux_2_17_x86_64" for t in ("311", "312", "313")] if name in COMPILED \
            else ["py3-none-any"]
        for tag in tags:
            fake_wheel(folder, name, version, tag)
    return folder


def resolves(wheels: Path, python: str, requirements: list[str]) -> subprocess.CompletedProcess:
    """pip's dry run of the notebook's install (--no-index --no-deps) on Kaggle's Linux and ``python``."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index", "--no-deps",
                           "--only-binary=:all:", "--python-version", python, "--implementation", "cp", *platforms,
                           "--target", str(wheels / "target"), *[a for d in wheels.iterdir() if d.is_dir()
                                                                  for a in ("--find-links", str(d))],
                           *requirements], capture_output=True, text=True)


def test_the_shipped_wheels_resolve_offline_for_every_python_the_image_may_have(wheelhouse, tmp_path):
    shipped = ship_wheels(tmp_path / "wheels", tmp_path / "cache", find_links=wheelhouse)
    assert set(shipped) == set(PYTHONS) == {"3.11", "3.12", "3.13"}
    assert sorted(p.name for p in (tmp_path / "wheels").iterdir()) == ["cp311", "cp312", "cp313", "py3"]
    for python in PYTHONS:
        compiled = sorted(w.name.split("-")[0] for w in (tmp_path / "wheels" / python_tag(python)).glob("*.whl"))
        assert compiled == sorted(n.replace("-", "_") for n in COMPILED)
        ran = resolves(tmp_path / "wheels", python, shipped[python])
        assert ran.returncode == 0, (python, ran.stderr[-2000:])
    # the check has teeth: the 3.11 set alone, as the notebook shipped it until this change, does not install on 3.12
    (tmp_path / "only311").mkdir()
    for folder in ("cp311", "py3"):
        (tmp_path / "wheels" / folder).rename(tmp_path / "only311" / folder)
    refused = resolves(tmp_path / "only311", "3.12", shipped["3.12"])
    assert refused.returncode != 0
    assert any(f"No matching distribution found for {name}==" in refused.stderr for name in COMPILED)


def test_the_notebook_installs_the_set_of_its_own_python_and_says_in_one_line_when_none_was_shipped(tmp_path):
    for folder, name in (("cp311", "orjson-3-cp311-cp311-x.whl"), ("cp312", "orjson-3-cp312-cp312-x.whl"),
                         ("py3", "dvc-3-py3-none-any.whl")):
        (tmp_path / "wheels" / folder).mkdir(parents=True)
        (tmp_path / "wheels" / folder / name).touch()
    assert [w.name for w in wheels_for(tmp_path, (3, 12, 3))] == ["orjson-3-cp312-cp312-x.whl",
                                                                   "dvc-3-py3-none-any.whl"]
    with pytest.raises(SystemExit) as refused:
        wheels_for(tmp_path, (3, 13, 0))
    assert str(refused.value) == (f"error: {tmp_path / 'wheels'}: no wheels for Python 3.13 (this image's); the run "
                                  f"shipped cp311, cp312: send again with --packages index")


def test_what_the_image_carries_is_read_from_kaggles_image_definition():
    carried = image_carries()
    assert {"torch", "timm", "albumentations", "kornia", "opencv-python", "numpy"} <= carried
    assert image_python() == "3.12"  # Kaggle/docker-python's Dockerfile.tmpl: PACKAGE_PATH=.../python3.12/...
    assert "kornia" not in {r.split("==")[0] for r in packages_to_ship("3.12")}
