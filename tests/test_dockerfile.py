"""Docker cannot run here: check the Dockerfile's structure, and that its RUN steps are the commands tests run."""

import ast
import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from testkit.processes import ROOT


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


DOWNLOAD = r"then python3 download\.py;"  # the build step, unless BAKE_WEIGHTS=0


def index(keyword: str, pattern: str) -> int:
    for i, (kw, args) in enumerate(instructions()):
        if kw == keyword and re.search(pattern, args):
            return i
    raise AssertionError(f"no {keyword} matching {pattern!r} in the Dockerfile")


def test_the_image_runs_the_pytorch_the_tests_run_in_its_cuda_build():
    """requirements.txt names torch once: make setup installs its CPU build, the image its CUDA build, before the
    rest of requirements.txt (which then finds it installed)."""
    kw, image = instructions()[0]
    cuda = re.fullmatch(r"nvidia/cuda:12\.(\d+)\.\d+-base-ubuntu24\.04", image)
    assert kw == "FROM" and cuda
    torch_from_its_index = index("RUN", rf"grep -E '\^torch==' requirements\.txt .*download\.pytorch\.org/whl/"
                                        rf"cu12{cuda.group(1)}$")
    assert index("COPY", r"^requirements\.txt") < torch_from_its_index < index("RUN", r"^pip install -r requirements")
    assert re.search(r"^torch==2\.\d+\.\d+ *$", (ROOT / "requirements.txt").read_text(), re.M)
    assert "TORCH := $(shell grep -E '^torch==' requirements.txt" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("name, default", [
    ("MODEL_ID", "prompthero/openjourney-v4"), ("CONTROLNET_ID", ""), ("SAFETY_CHECKER", "on"), ("DROP_T5", "0"),
    ("LORA_IDS", ""), ("PREVIEW_EVERY", "0"), ("PREVIEW_DECODER", ""),
])
def test_build_arguments_reach_download_py(name, default):
    arg = index("ARG", rf"^{name}={re.escape(default)}$")
    env = index("ENV", rf"(^| ){name}=\$\{{{name}\}}( |$)")
    run = index("RUN", DOWNLOAD)
    assert arg < env < run


@pytest.mark.parametrize("bake, runs", [("1", True), ("0", False)])
def test_bake_weights_0_builds_an_image_without_weights(tmp_path, bake, runs):
    """The download step's shell, run as the build runs it, with a python3 on PATH that notes its arguments."""
    (tmp_path / "python3").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/ran\n")
    (tmp_path / "python3").chmod(0o755)
    arg = index("ARG", r"^BAKE_WEIGHTS=1$")
    step = instructions()[index("RUN", DOWNLOAD)][1]
    shell = step.removeprefix("--mount=type=secret,id=HF_TOKEN,env=HF_TOKEN").strip()
    done = subprocess.run(["sh", "-ec", shell], env={"PATH": f"{tmp_path}:/usr/bin:/bin", "BAKE_WEIGHTS": bake},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and arg < index("RUN", DOWNLOAD), done.stderr
    assert ((tmp_path / "ran").read_text().strip() == "download.py") if runs else not (tmp_path / "ran").exists()


def test_layers_are_ordered_so_a_code_change_does_not_download_again():
    deps = index("RUN", r"^pip install -r requirements\.txt$")
    download = index("RUN", DOWNLOAD)
    copy_all = index("COPY", r"^\. \.$")
    assert deps < download < copy_all
    assert index("ENV", r"HF_HUB_OFFLINE=1") > download


def test_download_py_has_every_module_it_imports_copied_before_it_runs():
    copied = " ".join(args for kw, args in instructions()[: index("RUN", DOWNLOAD)] if kw == "COPY")
    for module in local_imports(ROOT / "download.py"):
        assert str(module.relative_to(ROOT)) in copied, module


def test_token_is_a_build_secret_not_an_argument():
    assert not any(kw == "ARG" and "TOKEN" in args for kw, args in instructions())
    assert "--mount=type=secret,id=HF_TOKEN,env=HF_TOKEN" in instructions()[index("RUN", DOWNLOAD)][1]


def test_serves_potassium_on_8000_with_a_healthcheck_that_catches_a_stuck_replica():
    assert index("EXPOSE", r"^8000$") >= 0
    assert index("HEALTHCHECK", r'CMD \["python3", "-m", "serverless_sd.health"\]$') >= 0
    assert instructions()[-1] == ("CMD", '["python3", "-u", "app.py"]')


def test_runs_as_an_unprivileged_user_after_the_last_build_step():
    user = index("USER", r".")
    uid = instructions()[user][1]  # numeric, so that the host resolves it without the image's /etc/passwd
    assert uid.isdigit() and int(uid) > 0 and index("RUN", rf"useradd .*--uid {uid} \w+$") < user
    assert all(kw != "RUN" for kw, _ in instructions()[user:])


def test_run_steps_are_what_setup_and_tests_run():
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements.txt" in makefile
    assert '"download.py"' in (ROOT / "tests" / "test_download.py").read_text()


def in_build_context(path: str) -> bool:
    """Docker's rule: the last .dockerignore line that matches the path (or a folder above it) decides."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    included = True
    for line in (line for line in lines if line and not line.startswith("#")):
        pattern = line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(prefix, pattern) or (pattern.startswith("**/") and any(
                fnmatch.fnmatchcase(part, pattern[3:]) for part in prefix.split("/"))) for prefix in prefixes):
            included = line.startswith("!")
    return included


@pytest.mark.parametrize("path", [
    ".env", ".env.production", "gateway.db", "gateway.db-wal", "gateway.db-shm", "jobs.sqlite", ".git/config",
    ".venv/bin/python", "models/x/unet.safetensors", "tests/test_app.py", ".pytest_cache/v/cache",
    ".hypothesis/examples/x", "node_modules/newman/index.js", "serverless_sd/__pycache__/schema.cpython-311.pyc",
    "outputs/call_1.png", "bench/results/cpu.json", "notes.txt",
])
def test_dockerignore_keeps_everything_else_out(path):
    assert not in_build_context(path)


def test_dockerignore_lets_in_what_the_image_runs():
    needed = local_imports(ROOT / "app.py") | local_imports(ROOT / "gateway.py") | local_imports(ROOT / "download.py")
    needed |= {ROOT / "serverless_sd" / "health.py", *(ROOT / "serverless_sd").rglob("*.html")}
    for path in [*needed, ROOT / "app.py", ROOT / "gateway.py", ROOT / "download.py", ROOT / "requirements.txt"]:
        assert in_build_context(str(path.relative_to(ROOT))), path


def local_imports(script: Path) -> set[Path]:
    """The project's own modules a script imports, followed transitively."""
    found, todo = set(), [script]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [f"serverless_sd.{node.module}" if node.module else "serverless_sd"]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                path = ROOT / (name.replace(".", "/") + ".py")
                package = ROOT / name.replace(".", "/") / "__init__.py"
                for candidate in (path, package):
                    if candidate.is_file() and candidate not in found:
                        found.add(candidate)
                        todo.append(candidate)
                if name.startswith("serverless_sd."):
                    found.add(ROOT / "serverless_sd" / "__init__.py")
    return found
