"""make bench-wheels: the wheels bench/gpu.sh carries to a lent GPU machine, which has no network.

What app.py and bench/gpu.py import, as requirements.txt pins it, and everything that needs in turn, less what the
machine's image already holds (bench/gpu_image.txt). Of the image's own, three kinds stay: its PyTorch stack (CUDA
builds), numpy and scipy (compiled against its numpy), and any package we do not pin ourselves. Our pins are carried
whatever the image holds: the versions the tests ran (the image's huggingface-hub 1.33 cannot serve diffusers 0.42).

    python3 -m bench.wheels [--python 3.12] [--out bench/wheels]

Resolves level by level with `pip download --no-deps` (Requires-Dist read from each wheel, markers evaluated for
Linux x86-64 and that Python), checks the carried wheels fit what the device tool carries (64 MiB with the tree), and
prints what it carries.
"""

import argparse
import platform
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# gateway.py's, and the RunPod worker's (app.py imports runpod only inside one): the GPU check runs neither.
NOT_RUN_THERE = {"fastapi", "starlette", "uvicorn", "python-multipart", "runpod"}
KEPT_FROM_THE_IMAGE = {"numpy", "scipy", "torch", "triton"}  # compiled against one another there
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "linux_x86_64", "any"]
CARRIED_BYTES = 64 << 20  # what a device call carries: the working tree and these wheels together


def pins() -> dict[str, str]:
    """requirements.txt's pins that app.py and the GPU check need."""
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    missing = NOT_RUN_THERE - set(found)
    assert not missing, f"bench/wheels.py leaves out packages requirements.txt no longer pins: {missing}"
    return {name: version for name, version in found.items() if name not in NOT_RUN_THERE}


def image_packages() -> dict[str, str | None]:
    """The GPU image's packages, with their versions where known."""
    packages = {}
    for line in (ROOT / "bench" / "gpu_image.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            packages[canonicalize_name(name)] = version or None
    return packages


def environment(python: str) -> dict[str, str]:
    """What requirement markers are evaluated against: the GPU image's Python (3.12.3), or this one."""
    full = {"3.12": "3.12.3"}.get(python) or (platform.python_version() if platform.python_version().startswith(
        python + ".") else f"{python}.0")
    return {"python_version": python, "python_full_version": full, "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def download(requirements: list[str], python: str, into: Path) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "--python-version", python, "--implementation", "cp", *platforms, "-d", str(into),
                           *requirements], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench/wheels: pip download failed:\n{done.stderr[-3000:]}")


def wheel_of(name: str, into: Path) -> Path:
    pattern = re.compile(rf"^{name.replace('-', '[-_.]')}-[^-]+-", re.IGNORECASE)  # a canonical name: [a-z0-9-]
    found = [path for path in into.glob("*.whl") if pattern.match(path.name)]
    assert len(found) == 1, f"{name}: {found or 'no wheel'} in {into}"
    return found[0]


def requires(wheel: Path, python: str) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(metadata).decode())
    needed = [Requirement(line) for line in headers.get_all("Requires-Dist") or []]
    return [r for r in needed if r.marker is None or r.marker.evaluate(environment(python))]


def carry(python: str, into: Path) -> dict[str, Path]:
    """Download what the GPU machine lacks for app.py into `into`: {package: its wheel}."""
    into.mkdir(parents=True, exist_ok=True)
    ours, image = pins(), image_packages()
    carried: dict[str, Path] = {}
    level = [Requirement(f"{name}=={version}") for name, version in ours.items() if name not in KEPT_FROM_THE_IMAGE]
    while level:
        wanted = {}
        for requirement in level:
            name = canonicalize_name(requirement.name)
            if name in carried or name in wanted or name in KEPT_FROM_THE_IMAGE or name.startswith("nvidia-"):
                continue
            if name in image and name not in ours:
                continue  # the image's own
            wanted[name] = requirement
        if not wanted:
            break
        download([f"{r.name}{r.specifier}" for r in wanted.values()], python, into)  # markers: evaluated above
        level = []
        for name in wanted:
            carried[name] = wheel_of(name, into)
            level += requires(carried[name], python)
    return carried


def tree_bytes() -> int:
    """The working tree as the device tool sends it (tracked and untracked files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (its image: 3.12)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "wheels")
    args = parser.parse_args()
    carried = carry(args.python, args.out)
    for stale in set(args.out.glob("*.whl")) - set(carried.values()):
        stale.unlink()  # from an earlier plan: two versions of one package stop the offline install
    total = sum(path.stat().st_size for path in carried.values())
    for path in sorted(carried.values()):
        print(f"{path.stat().st_size >> 10:>7} KB  {path.name}")
    tree = tree_bytes()
    print(f"{len(carried)} wheels, {total / 2**20:.1f} MiB in {args.out}; with the tree ({tree / 2**20:.1f} MiB), "
          f"{(total + tree) / 2**20:.1f} of the {CARRIED_BYTES >> 20} MiB a device call carries")
    if total + tree > CARRIED_BYTES:
        raise SystemExit("bench/wheels: more than a device call carries")


if __name__ == "__main__":
    main()
