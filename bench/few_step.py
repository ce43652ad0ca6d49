"""make bench-few-step: seconds per image at 4 steps against 25 on this CPU, and what a weighted long prompt costs.

The SD-1.5-sized random model (bench/models/sd15-random, as `make bench` builds it), in-process through the app's
pipeline code, 256x256, best of 3, run in turns:
- 25 steps with guidance 7 (the default request), 4 steps with guidance 7, and 4 steps with `lcm` and guidance 0
  (the few-step request: no unconditional pass);
- a 60-word prompt with an A1111 weight (through compel, in 77-token chunks) against a 2-word one (diffusers' own
  encoding), both at 4 steps with guidance 7.

Writes bench/results/few_step.json and prints it.
"""

import json

from bench.common import cpu_arguments, machine, sd15_folder
from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import parse
from serverless_sd.settings import Settings

WORDS = ("a lighthouse on a cliff at dusk, oil painting, dramatic clouds, waves breaking on the rocks, a small boat "
         "with a red sail, seagulls, warm light from the lamp, cold blue sea, detailed brush strokes, ") * 2
REQUESTS = {
    "25_steps_guidance_7": {"num_inference_steps": 25, "guidance_scale": 7.0},
    "4_steps_guidance_7": {"num_inference_steps": 4, "guidance_scale": 7.0},
    "4_steps_lcm_guidance_0": {"num_inference_steps": 4, "guidance_scale": 0.0, "scheduler": "lcm"},
    "4_steps_long_weighted_prompt": {"num_inference_steps": 4, "prompt": WORDS.replace("red sail", "(red sail:1.4)")},
}


def main() -> None:
    args = cpu_arguments(runs=3)
    model = StableDiffusion.load(Settings(model_id=str(sd15_folder(args.model)), device="cpu"))
    requests = {name: parse({"prompt": "a lighthouse", "width": 256, "height": 256, "seed": 1, **inputs},
                            model.limits) for name, inputs in REQUESTS.items()}
    model.generate(requests["4_steps_guidance_7"])
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(args.runs):
        for name, request in requests.items():
            times[name].append(model.generate(request).inference_ms / 1000)
    best = {name: min(values) for name, values in times.items()}
    r = {"machine": machine(), "s_per_image": best, "runs": times,
         "speedup_4_steps_lcm_vs_25": best["25_steps_guidance_7"] / best["4_steps_lcm_guidance_0"],
         "speedup_guidance_off_at_4_steps": best["4_steps_guidance_7"] / best["4_steps_lcm_guidance_0"],
         "weighted_long_prompt_extra_s": best["4_steps_long_weighted_prompt"] - best["4_steps_guidance_7"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "few_step.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
