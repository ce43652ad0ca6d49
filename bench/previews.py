"""make bench-previews: what progress previews cost per image on this CPU, against plain diffusers and against
previews decoded by the model's own VAE.

The SD-1.5-sized random model (bench/models/sd15-random, as `make bench` builds it) and a TAESD-sized random
AutoencoderTiny (diffusers' default config is TAESD's architecture), 256x256, 8 steps with guidance 7, seed 1, in
one process, in turns, best of `--runs`:

- seconds per image: plain diffusers (no callback); the app without previews (PREVIEW_EVERY=0: the step callback
  that counts progress only); with a preview every 4 steps (one, after step 4) and after every step (7);
- one preview's decode alone, TAESD against the model's own VAE, at 256x256 and 512x512.

Writes bench/results/previews.json and prints it.
"""

import json
import time
from pathlib import Path

import torch

from bench.common import cpu_arguments, machine, sd15_folder
from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import parse
from serverless_sd.settings import Settings

REQUEST = {"prompt": "a lighthouse", "width": 256, "height": 256, "seed": 1, "num_inference_steps": 8,
           "guidance_scale": 7.0}
EVERY = (0, 4, 1)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def decoder_folder(folder: Path) -> Path:
    if not (folder / "config.json").exists():
        from diffusers import AutoencoderTiny

        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(folder)  # TAESD's own shape: 2.4 M parameters
    return folder


def main() -> None:
    args = cpu_arguments(runs=2)
    model_folder = sd15_folder(args.model)
    taesd = decoder_folder(args.model.parent / "taesd-random")
    models = {every: StableDiffusion.load(Settings(model_id=str(model_folder), device="cpu", preview_every=every,
                                                   preview_decoder=str(taesd))) for every in EVERY}
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_folder, torch_dtype=torch.bfloat16, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def plain() -> float:
        generator = torch.Generator().manual_seed(REQUEST["seed"])
        return timed(lambda: pipe(REQUEST["prompt"], width=256, height=256, num_inference_steps=8,
                                  guidance_scale=7.0, generator=generator))

    requests = {every: parse(REQUEST, model.limits) for every, model in models.items()}
    runs: dict[str, list[float]] = {"plain_diffusers": [], **{f"app_preview_every_{e}": [] for e in EVERY}}
    plain()
    for every, model in models.items():
        model.generate(requests[every])
    for _ in range(args.runs):
        runs["plain_diffusers"].append(plain())
        for every, model in models.items():
            runs[f"app_preview_every_{every}"].append(timed(lambda m=model, e=every: m.generate(requests[e], "b")))
    previewer, vae = models[1].progress.preview, models[1].pipe.vae
    decode = {}
    for side in (256, 512):
        latents = torch.randn(1, 4, side // 8, side // 8, dtype=vae.dtype)
        with torch.inference_mode():
            decode[f"taesd_{side}_ms"] = 1000 * min(
                timed(lambda x=latents, s=side: previewer(models[1].pipe, x, (s, s))) for _ in range(5))
            decode[f"vae_{side}_ms"] = 1000 * min(
                timed(lambda x=latents: vae.decode(x / vae.config.scaling_factor)) for _ in range(3))
    best = {name: min(values) for name, values in runs.items()}
    result = {"machine": machine(), "request": REQUEST, "s_per_image": best, "runs": runs,
              "preview_cost_per_image_s": {f"every_{e}": best[f"app_preview_every_{e}"] - best["app_preview_every_0"]
                                           for e in EVERY if e},
              "one_decode": {k: round(v, 1) for k, v in decode.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "previews.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
