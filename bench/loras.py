"""make bench-loras: what LoRAs cost per request on this CPU, the app's fusing against plain diffusers' adapters.

The SD-1.5-sized random model (bench/models/sd15-random, as `make bench` builds it) and two random LoRAs of a
common shape (rank 32 on the UNet's attention projections and first convolutions and the text encoder's attention,
as kohya's trainers make them), 256x256, 4 steps with guidance 7, seed 1, best of 3, in one process, in turns:

- the app (pipelines.StableDiffusion, bf16 as it serves on this CPU): reading a LoRA the first time (diffusers'
  loader into the hollow model), a switch (none -> A, A -> A+B, A+B -> none, the same set again), and seconds per
  image with none, A, and A+B fused;
- plain diffusers (bf16, the same weights): load_lora_weights once per LoRA, set_adapters per request (its switch),
  and seconds per image with the adapters active (unfused: each step also runs the LoRAs' own layers) and with
  them disabled.

Writes bench/results/loras.json and prints it.
"""

import json
import time
from pathlib import Path

import torch

from bench.common import cpu_arguments, machine, sd15_folder
from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import parse
from serverless_sd.settings import Settings
from testkit.model_factory import save_tiny_lora

REQUEST = {"prompt": "a lighthouse", "width": 256, "height": 256, "seed": 1, "num_inference_steps": 4}
SETS = {"none": [], "A": [{"name": "a", "scale": 0.8}],
        "A+B": [{"name": "a", "scale": 0.8}, {"name": "b", "scale": 0.5}]}


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def ours(model_folder: Path, loras: Path, runs: int) -> dict:
    model = StableDiffusion.load(Settings(model_id=str(model_folder), device="cpu", loras_dir=loras))
    requests = {name: parse({**REQUEST, "loras": chosen}, model.limits) for name, chosen in SETS.items()}
    model.generate(requests["none"])
    read = {name: timed(lambda name=name: model.loras.lora(requests["A+B"].loras["ab".index(name)]))
            for name in "ab"}
    switch = {"none -> A": [], "A -> A+B": [], "A+B -> none": [], "same set again": []}
    for _ in range(runs):
        for name, chosen in (("none -> A", "A"), ("A -> A+B", "A+B"), ("A+B -> none", "none"),
                             ("same set again", "none")):
            switch[name].append(timed(lambda chosen=chosen: model.loras.apply(requests[chosen].loras)))
    per_image = {name: [] for name in SETS}
    for _ in range(runs):
        for name, request in requests.items():
            per_image[name].append(model.generate(request).inference_ms / 1000)
    return {"first_read_s": read, "switch_s": {k: min(v) for k, v in switch.items()},
            "s_per_image": {k: min(v) for k, v in per_image.items()}, "runs": per_image}


def plain(model_folder: Path, loras: Path, runs: int) -> dict:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_folder, torch_dtype=torch.bfloat16, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    load = {name: timed(lambda name=name: pipe.load_lora_weights(loras, weight_name=f"{name}.safetensors",
                                                                  adapter_name=name)) for name in "ab"}

    def image() -> float:
        generator = torch.Generator().manual_seed(REQUEST["seed"])
        return timed(lambda: pipe(REQUEST["prompt"], width=256, height=256, num_inference_steps=4,
                                  guidance_scale=7.0, generator=generator))

    def use(name: str) -> None:
        chosen = SETS[name]
        if not chosen:
            pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([c["name"] for c in chosen], [c["scale"] for c in chosen])

    switch = {"none -> A": [], "A -> A+B": [], "A+B -> none": []}
    for _ in range(runs):
        for name, chosen in (("none -> A", "A"), ("A -> A+B", "A+B"), ("A+B -> none", "none")):
            switch[name].append(timed(lambda chosen=chosen: use(chosen)))
    use("none")
    image()
    per_image = {name: [] for name in SETS}
    for _ in range(runs):
        for name in SETS:
            use(name)
            per_image[name].append(image())
    return {"load_lora_weights_s": load, "switch_s": {k: min(v) for k, v in switch.items()},
            "s_per_image": {k: min(v) for k, v in per_image.items()}, "runs": per_image}


def main() -> None:
    args = cpu_arguments(runs=3)
    model_folder = sd15_folder(args.model)
    loras = args.model.parent / "sd15-loras"
    for seed, name in enumerate("ab"):
        if not (loras / f"{name}.safetensors").exists():
            save_tiny_lora(model_folder, loras / f"{name}.safetensors", seed=seed, rank=32, alpha=16, std=0.01)
    result = {"machine": machine(), "lora_mb": {name: round((loras / f"{name}.safetensors").stat().st_size / 1e6, 1)
                                                for name in "ab"},
              "app": ours(model_folder, loras, args.runs), "plain_diffusers": plain(model_folder, loras, args.runs)}
    app, diffusers = result["app"]["s_per_image"], result["plain_diffusers"]["s_per_image"]
    result["lora_cost_per_image_s"] = {"app": {k: app[k] - app["none"] for k in ("A", "A+B")},
                                       "plain_diffusers": {k: diffusers[k] - diffusers["none"] for k in ("A", "A+B")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loras.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
