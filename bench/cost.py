"""The seed README's case, 800 images a month, always on against scale to zero: GPU seconds billed, and dollars at
a stated per-second price. Every input is named; the GPU figures are the ones measured (bench/results/gpu-h200.json).

    python3 -m bench.cost        prints the Markdown table README.md carries (a test checks that they agree)
"""

import json

from bench.common import ROOT

IMAGES_PER_MONTH = 800  # the seed README: "800 image generations over a period of a month ... $5.00"
MONTH_S = 30 * 24 * 3600
PRICE_PER_S = 0.00116  # RunPod Serverless, 80 GB H100 "flex" worker, USD per second as listed in 2025
IDLE_S = 5  # RunPod's default idle timeout: a worker stays up (billed) this long after its last job
BURST = 10  # images per burst in the middle row


def measured() -> dict[str, float]:
    gpu = json.loads((ROOT / "bench" / "results" / "gpu-h200.json").read_text())["app_default"]
    return {"image_s": gpu["s_per_image"], "cold_s": gpu["cold_s"]}


def rows() -> list[tuple[str, str, float]]:
    image_s, cold_s = measured().values()
    n = IMAGES_PER_MONTH
    return [
        ("always on (one GPU, all month)", "30 days x 86,400 s", MONTH_S),
        ("scale to zero, every image its own cold start", f"{n} x ({cold_s:.1f} + {image_s:.2f} + {IDLE_S}) s",
         n * (cold_s + image_s + IDLE_S)),
        (f"scale to zero, {BURST} images per cold start", f"{n // BURST} x ({cold_s:.1f} + {IDLE_S}) + {n} x "
         f"{image_s:.2f} s", n // BURST * (cold_s + IDLE_S) + n * image_s),
        ("GPU seconds of generation alone (the floor)", f"{n} x {image_s:.2f} s", n * image_s),
    ]


def table() -> str:
    lines = [f"| {IMAGES_PER_MONTH} images a month | GPU seconds billed | at ${PRICE_PER_S}/s |", "| --- | --- | --- |"]
    lines += [f"| {name} | {formula} = {seconds:,.0f} | ${seconds * PRICE_PER_S:,.2f} |"
              for name, formula, seconds in rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
