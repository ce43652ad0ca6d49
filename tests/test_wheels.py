"""bench/wheels.py: what bench/gpu.sh carries to the GPU machine is enough there, offline.

Proved here, in an environment holding only the GPU image's packages (bench/gpu_image.txt: those this machine has,
standing in for the image's own) and the carried wheels, installed with --no-index: bench/offline_check.py runs in
it (every module app.py and bench/gpu.py import, a generation with a weighted prompt and a LoRA), with our pinned
versions, not the image's. The wheels are this Python's builds of the same versions (the GPU machine runs 3.12; make
bench-wheels fetches those)."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

from bench import wheels
from testkit import processes


def the_images_packages(into: Path) -> Path:
    """The image's packages, as installed here, linked into one folder (sources and metadata both)."""
    into.mkdir()
    for name in wheels.image_packages():
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue  # the image has it, the app does not use it (jax, cupy, ...)
        site = Path(importlib.metadata.distribution(name).locate_file(""))
        for top in {Path(str(f)).parts[0] for f in files if not str(f).startswith("..")}:
            if not (into / top).exists():
                (into / top).symlink_to(site / top)
    return into


def isolated(paths: list[Path], code: str) -> subprocess.CompletedProcess:
    """python -S: none of this interpreter's site-packages, only `paths` and the standard library."""
    setup = f"import sys; sys.path[:0] = {[str(p) for p in paths]!r}; "
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"HF_HUB_OFFLINE": "1"}
    return processes.run([sys.executable, "-S", "-c", setup + code], timeout=600, cwd=processes.ROOT, env=env)


def install(wheel_files: list[Path], into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(into), *map(str, wheel_files)], check=True, capture_output=True)
    return into


def test_the_carried_wheels_with_the_gpu_images_packages_run_the_app_offline(tmp_path):
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    carried = wheels.carry(python, tmp_path / "wheels")
    assert {"diffusers", "transformers", "huggingface-hub", "pydantic", "potassium", "boto3", "blinker"} <= set(carried)
    assert not set(carried) & {"torch", "numpy", "scipy", "runpod", "fastapi"}
    image = the_images_packages(tmp_path / "image")
    roots = [processes.ROOT, processes.ROOT / "bench"]
    site = install(list(carried.values()), tmp_path / "site")
    result = isolated([site, image, *roots], "import runpy; runpy.run_module('bench.offline_check', "
                                             "run_name='__main__')")
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    pins = wheels.pins()
    assert served["ok"] and served["device"] == "cpu"
    for module, package in (("diffusers", "diffusers"), ("transformers", "transformers"),
                            ("huggingface_hub", "huggingface-hub"), ("tokenizers", "tokenizers")):
        assert served[module] == pins[canonicalize_name(package)], (module, served[module])  # ours, not the image's

    # The proof can fail: without one wheel the image lacks, nothing starts.
    without = install([path for name, path in carried.items() if name != "pydantic"], tmp_path / "site-without")
    failed = isolated([without, image, *roots], "import app")
    assert failed.returncode != 0 and "No module named 'pydantic'" in failed.stderr
