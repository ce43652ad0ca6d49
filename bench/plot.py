"""images/benchmarks.png from bench/results/: seconds per image, this app against plain diffusers."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def bars(axis, title: str, rows: list[tuple[str, float]], colors: list[str]) -> None:
    names, values = zip(*rows, strict=True)
    axis.barh(names, values, color=colors)
    for y, value in enumerate(values):
        axis.text(value, y, f" {value:.2f} s", va="center")
    axis.invert_yaxis()
    axis.set_xlim(0, max(values) * 1.3)
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("seconds per image (lower is better)")


def main() -> None:
    gpu = json.loads((RESULTS / "gpu-h200.json").read_text())
    cpu = json.loads((RESULTS / "cpu.json").read_text())
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5))
    bars(top, f"{gpu['machine']['gpu']}: SD-1.5-sized pipeline (random weights), 512x512, 50 steps", [
        ("plain diffusers fp32", gpu["plain_float32"]["s_per_image"]),
        ("plain diffusers fp16", gpu["plain_float16"]["s_per_image"]),
        ("app.py default (fp16 + CUDA graphs)", gpu["app_default"]["s_per_image"]),
        ("app.py COMPILE=1", gpu["app_compile"]["s_per_image"]),
    ], ["#bbbbbb", "#999999", "#f2b705", "#d98e04"])
    machine = f"{cpu['machine']['cpu']} ({cpu['machine']['cores']} cores)"
    bars(bottom, f"{machine}: 256x256, 4 steps, best of 5 run in turns", [
        ("plain diffusers fp32", cpu["plain_float32"]["s_per_image"]),
        ("plain diffusers bf16", cpu["plain_bfloat16"]["s_per_image"]),
        ("app.py default (bf16, channels_last), over HTTP", cpu["app"]["s_per_image"]),
    ], ["#bbbbbb", "#999999", "#f2b705"])
    figure.tight_layout()
    figure.savefig(ROOT / "images" / "benchmarks.png", dpi=110)


if __name__ == "__main__":
    main()
