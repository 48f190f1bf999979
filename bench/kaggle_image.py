"""What Kaggle's notebook image carries, read from Kaggle's own image definition: writes
pipeline/kaggle/kaggle_image.txt, the list `python -m pipeline.kernel train send` never ships nor replaces.

Kaggle's image is Colab's base image plus what Kaggle/docker-python installs over it. Its sources here, each line of
the output naming the one it came from:

- ``kaggle_requirements.txt``: what Kaggle installs over the base (kornia is there: the image's copy is kept);
- ``Dockerfile.tmpl``: its own `pip install`s (protobuf, grpcio-tools, setuptools, ...) and the image's Python;
- ``tests/test_<name>.py``: the packages the image's own tests import, the Colab base's among them (torch, timm,
  albumentations, OpenCV, ...): no file of the repository lists the base itself;
- ``COLAB_BASE`` below: what Colab's base carries beneath those (requests, PyYAML, ...), which no file of Kaggle's
  lists: the one part not read from Kaggle, said so in each of its lines.

Bring the repository with the search tool's ``fetch`` (github:Kaggle/docker-python), then:

    python bench/kaggle_image.py /work/.mirror/Kaggle+docker-python/repo
"""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "pipeline" / "kaggle" / "kaggle_image.txt"
# tests/test_<name>.py -> the distribution it shows the image carries, where the names differ
TESTED = {"pytorch": "torch", "opencv": "opencv-python", "sklearn": "scikit-learn", "skimage": "scikit-image",
          "pytorch_lightning": "pytorch-lightning", "pytorch_ignite": "pytorch-ignite", "bayes_opt":
          "bayesian-optimization", "pycrypto": "pycryptodome", "hf_datasets": "datasets", "rgf": "rgf-python",
          "pysal": "libpysal", "jupyter_nbconvert": "nbconvert", "python_lsp_server": "python-lsp-server"}
NOT_A_PACKAGE = {"7z", "bigquery", "bigquery_proxy", "bigquery_storage", "gcloud", "gcs", "imports",
                 "kaggle_kernel_credentials", "kaggle_module_resolver", "natural_language", "nvidia", "translation",
                 "ucaip", "user_secrets", "user_session", "video_intelligence", "vision", "google_genai_patch",
                 "google_generativeai_patch", "google_generativeai_patch_disabled", "google_import_adk",
                 "tensorflow_bigquery", "jupytertensorboard", "earthengine"}
# Beneath the tested packages: what Colab's base image carries and no file of Kaggle's lists (the requirements of
# torch, timm, albumentations, pandas, matplotlib, requests, Jupyter). Shipping one would replace the image's copy.
COLAB_BASE = """
absl-py aiohttp aiosignal annotated-types anyio attrs beautifulsoup4 certifi cffi charset-normalizer click
cloudpickle contourpy cryptography cycler filelock fonttools frozenlist fsspec gitpython gitdb google-auth grpcio h11
httpcore httpx huggingface-hub idna imageio jinja2 joblib jsonschema kiwisolver lightning-utilities markdown-it-py
markupsafe mdurl mpmath multidict networkx nvidia-cublas-cu12 nvidia-cuda-cupti-cu12 nvidia-cuda-nvrtc-cu12
nvidia-cuda-runtime-cu12 nvidia-cudnn-cu12 nvidia-cufft-cu12 nvidia-curand-cu12 nvidia-cusolver-cu12
nvidia-cusparse-cu12 nvidia-nccl-cu12 nvidia-nvjitlink-cu12 nvidia-nvtx-cu12 opencv-python-headless
opencv-contrib-python packaging pillow platformdirs psutil pyarrow pycparser pydantic pydantic-core pygments
pyparsing python-dateutil pytz pyyaml qudida regex requests rich safetensors scipy six smmap sniffio soupsieve sympy
threadpoolctl tifffile tokenizers torchaudio torchvision tqdm triton typing-extensions tzdata urllib3 wheel yarl
propcache simsimd stringzilla albucore typing-inspection
""".split()


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def show(repo: Path, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


def carried(repo: Path) -> tuple[dict[str, str], str, str]:
    """({distribution: where it is read}, the image's Python, the commit read)."""
    found: dict[str, str] = {}
    for number, line in enumerate(show(repo, "kaggle_requirements.txt").splitlines(), 1):
        line = line.split("#")[0].strip()
        if line and not line.startswith("git+"):
            found.setdefault(canonical(re.split(r"[\[<>=!~; ]", line)[0]), f"kaggle_requirements.txt:{number}")
    dockerfile = show(repo, "Dockerfile.tmpl")
    for number, line in enumerate(dockerfile.splitlines(), 1):
        if "pip install" not in line:
            continue
        words = line.split("pip install", 1)[1].split("&&")[0].split()
        for before, word in zip(["install", *words], words):
            name = word.strip('"\'')
            if name.startswith("-") or before in ("-r", "--requirement") or not re.match(r"[A-Za-z]", name) \
                    or "/" in name or ":" in name:
                continue
            found.setdefault(canonical(re.split(r"[\[<>=!~;]", name)[0]), f"Dockerfile.tmpl:{number}")
    python = re.search(r"PACKAGE_PATH=/usr/local/lib/python(3\.\d+)/", dockerfile)[1]
    listing = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", "HEAD", "tests/"],
                             capture_output=True, text=True, check=True).stdout.split()
    for path in listing:
        tested = re.fullmatch(r"tests/test_(\w+)\.py", path)
        if tested and tested[1] not in NOT_A_PACKAGE:
            found.setdefault(canonical(TESTED.get(tested[1], tested[1])), path)
    for name in COLAB_BASE:
        found.setdefault(canonical(name), "Colab's base image (no file of Kaggle's lists it)")
    commit = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %ad", "--date=short"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return found, python, commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", type=Path, help="a checkout or git directory of Kaggle/docker-python")
    args = parser.parse_args()
    found, python, commit = carried(args.repo)
    lines = [f"# Distributions Kaggle's notebook image carries: never shipped, never replaced by `train send`.",
             f"# Made by bench/kaggle_image.py from Kaggle/docker-python at {commit}; each line says where it is read.",
             f"python {python}  # Dockerfile.tmpl: PACKAGE_PATH"]
    lines += [f"{name}  # {where}" for name, where in sorted(found.items())]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT}: {len(found)} distributions, Python {python}, Kaggle/docker-python {commit}")


if __name__ == "__main__":
    main()
