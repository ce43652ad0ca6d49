"""The GPU check: every path the app takes on a GPU, each against plain diffusers in the same run, in one device call.

    bash bench/gpu.sh                      (on the lent machine; bench/wheels carried: make bench-wheels)
    python3 -m bench.gpu --out DIR [--budget 450] [--only NAME ...] [--smoke]

Models with random weights, built on the machine (never downloaded): SD 1.5's, SDXL's, and SD 3.5 Medium's and
FLUX.1's widths with a few of their blocks (testkit.model_factory), plus the tiny models for the paths whose speed
does not matter. Checks run in the order below, each recorded in OUT/gpu.json the moment it ends: its figures, "ok"
and, where it failed, why. A check starts only while the budget lasts (the device call's 10 minutes hold a rerun
too); the rest are recorded as not run. Exits 1 if a check failed.

--smoke runs the same checks on the CPU with the tiny models and two steps, without the speed bounds: what
tests/test_gpu_check.py runs, so that the harness itself is tested where no GPU is.
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from bench.common import ROOT, App, Plain, median
from testkit import model_factory

CARD_GB = 24  # the replica under test runs as on a 24 GB card (torch.cuda.set_per_process_memory_fraction)


class Check(AssertionError):
    pass


def expect(condition: bool, why: str) -> None:
    if not condition:
        raise Check(why)


def digest(answer: dict) -> str:
    return hashlib.sha256(answer["images"][0].encode()).hexdigest()[:16]


def pixels_apart(a: dict, b: dict) -> int:
    """The largest difference, in levels, between the first images of two answers."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    def array(answer: dict):
        data = base64.b64decode(answer["images"][0].partition(",")[2])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)

    return int(np.abs(array(a) - array(b)).max())


SMOKE_ENV = {"DEVICE": "cpu", "DTYPE": "float32"}  # plain diffusers' dtype in --smoke, on any CPU


class Run:
    """The models, the results file, the budget."""

    def __init__(self, out: Path, budget_s: float, smoke: bool):
        self.out, self.budget_s, self.smoke = out, budget_s, smoke
        self.started = time.monotonic()
        self.device = "cpu" if smoke else "cuda"
        self.root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.results: dict = {"machine": machine(), "smoke": smoke, "checks": {}}
        self.size, self.steps = (64, 2) if smoke else (512, 50)
        self._models: dict[str, Path] = {}

    def record(self, name: str, value: dict) -> None:
        self.results["checks"][name] = value
        (self.out / "gpu.json").write_text(json.dumps(self.results, indent=2))
        print(name, json.dumps(value)[:2000], flush=True)

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def model(self, name: str) -> Path:
        """The model named, built once (timed into the results)."""
        if name not in self._models:
            started = time.monotonic()
            folder = self.root / name
            if self.smoke or name.startswith("tiny"):
                builders = {"sd15": model_factory.save_tiny_sd, "tiny-sd": model_factory.save_tiny_sd,
                            "sdxl": model_factory.save_tiny_sdxl, "sd35": lambda f: model_factory.save_tiny_sd3(
                                f, **model_factory.SD35_MEDIUM), "flux": model_factory.save_tiny_flux,
                            "sd15-controlnet": model_factory.save_tiny_controlnet,
                            "tiny-controlnet": model_factory.save_tiny_controlnet,
                            "tiny-taesd": model_factory.save_tiny_preview_decoder}
                builders[name](folder)
            elif name == "sd15":
                with torch.device(self.device):
                    model_factory.save_sd15_sized(folder)
            elif name == "sd15-controlnet":
                model_factory.save_controlnet_of(self.model("sd15"), folder)
            else:
                build, dtype = {"sdxl": (model_factory.sdxl_sized, torch.float16),
                                "sd35": (model_factory.sd35_shaped, torch.bfloat16),
                                "flux": (model_factory.flux_shaped, torch.bfloat16)}[name]
                model_factory.save_sized(build, folder, dtype, self.device)
            self._models[name] = folder
            self.results.setdefault("build_s", {})[name] = round(time.monotonic() - started, 1)
        return self._models[name]

    def lora(self, model: str) -> Path:
        folder = self.root / f"{model}-loras"
        if not (folder / "style.safetensors").exists():
            model_factory.save_tiny_lora(self.model(model), folder / "style.safetensors", rank=8, std=0.05)
        return folder

    def app(self, model: str, card_gb: float | None = CARD_GB, **env: str) -> App:
        """app.py on `model`; on a GPU bounded to card_gb of its memory, as on a smaller card."""
        script = "app.py"
        if card_gb and not self.smoke:
            script = str(self.root / "bounded_app.py")
            Path(script).write_text(BOUNDED_APP.format(root=str(ROOT), card_gb=card_gb))
        return App(self.model(model), script=script, timeout=900, **(SMOKE_ENV if self.smoke else {}), **env)

    def plain(self, model: str, dtype: str, size: int, steps: int) -> Plain:
        return Plain(self.model(model), device=self.device, dtype="float32" if self.smoke else dtype, size=size,
                     steps=steps)


# app.py in a process that sees only part of the GPU's memory: a replica on a CARD_GB card.
BOUNDED_APP = """
import runpy, sys, torch
torch.cuda.set_per_process_memory_fraction({card_gb} * 2**30 / torch.cuda.get_device_properties(0).total_memory)
sys.path.insert(0, {root!r})
runpy.run_path({root!r} + "/app.py", run_name="__main__")
"""


def machine() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True).stdout.strip()
    return info


def health(app: App) -> dict:
    import httpx

    return httpx.get(app.url + "/healthz").json()


def timed(app: App, runs: int = 3, **inputs) -> tuple[float, dict]:
    """The median seconds of `runs` requests (after one that warms the shape up), and the last answer."""
    app.generate(**inputs)
    walls, answer = [], None
    for _ in range(runs):
        wall, answer = app.generate(**inputs)
        walls.append(wall)
    return median(walls), answer


def picture(size: int) -> str:
    """A data URI of a size x size picture of noise (seeded): an input image or a control image."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# The checks. Each takes the Run and returns its figures; a failed expectation raises Check.

def sd15_speed(run: Run, figures: dict) -> dict:
    """SD 1.5, 512x512, 50 steps, one image: plain diffusers float16 against the app's default (CUDA graphs, on a
    24 GB card) and against the app without CUDA graphs, whose gap to plain diffusers is the eager overhead (goal:
    within 5%). The same seed gives plain diffusers' image."""
    size, steps = run.size, run.steps
    inputs = {"width": size, "height": size, "num_inference_steps": steps, "seed": 0, "guidance_scale": 7.0}
    plain = run.plain("sd15", "float16", size, steps)
    try:
        plain_s = median([plain.run() for _ in range(3)])
        _, theirs = plain.generate(**inputs)
        cold = plain.cold_s
    finally:
        plain.stop()
    figures |= {"plain_float16_s": plain_s, "plain_cold_s": cold}
    for name, env in (("app_default", {}), ("app_without_cuda_graphs", {"CUDA_GRAPHS": "0"})):
        app = run.app("sd15", **env)
        try:
            seconds, ours = timed(app, **inputs)
            figures[name] = {"s": seconds, "cold_s": app.cold_s, "same_as_plain": digest(ours) == digest(theirs),
                             "levels_from_plain": pixels_apart(ours, theirs), "healthz": health(app)}
        finally:
            app.stop()
    figures["eager_gap"] = figures["app_without_cuda_graphs"]["s"] / plain_s
    figures["speedup_over_plain"] = plain_s / figures["app_default"]["s"]
    expect(all(figures[n]["levels_from_plain"] <= 2 for n in ("app_default", "app_without_cuda_graphs")),
           "the app's image is not plain diffusers' for the same seed")
    if not run.smoke:
        expect(figures["eager_gap"] <= 1.05, f"eager {figures['eager_gap']:.3f}x plain diffusers (goal: 1.05)")
        expect(figures["app_default"]["s"] < plain_s, "CUDA graphs slower than plain diffusers")
    return figures


def sd15_paths(run: Run, figures: dict) -> dict:
    """On one replica (CUDA graphs, 24 GB): batches of 4, guidance off, each scheduler family, a 4-step LCM request,
    img2img and ControlNet under graphs, a LoRA switch (it changes the image, and the image without it comes back
    bit for bit), progress that tells what the GPU has run, and the largest requests' memory (1024x1024, 4 images);
    each image against plain diffusers' (same seed, eager) where plain diffusers has the path."""
    size, steps = run.size, min(run.steps, 20)
    app = run.app("sd15", CONTROLNET_ID=str(run.model("sd15-controlnet")), LORAS_DIR=str(run.lora("sd15")),
                  PREVIEW_EVERY="5", PREVIEW_DECODER=str(run.model("tiny-taesd")))
    plain = run.plain("sd15", "float16", size, steps)
    try:
        for name, extra in (("four_images", {"num_images": 4}), ("guidance_off", {"guidance_scale": 1.0}),
                            *((f"scheduler_{s}", {"scheduler": s}) for s in ("euler", "euler_a", "ddim", "dpm++_2m",
                                                                             "unipc", "lms")),
                            ("lcm_4_steps", {"scheduler": "lcm", "num_inference_steps": 4, "guidance_scale": 1.0})):
            inputs = {"width": size, "height": size, "num_inference_steps": steps, "seed": 3, "guidance_scale": 7.0,
                      **extra}
            seconds, ours = timed(app, runs=1, **inputs)
            _, theirs = plain.generate(**inputs)
            figures[name] = {"s": seconds, "levels_from_plain": pixels_apart(ours, theirs),
                             "images": len(ours["images"])}
        for name, extra in (("img2img", {"image": picture(size), "strength": 0.6}),
                            ("controlnet", {"control_image": picture(size)})):
            inputs = {"width": size, "height": size, "num_inference_steps": steps, "seed": 3, **extra}
            _, first = app.generate(**inputs)
            seconds, ours = timed(app, runs=1, **inputs)
            figures[name] = {"s": seconds, "mode": ours["mode"], "reproduces": digest(first) == digest(ours)}
        inputs = {"width": size, "height": size, "num_inference_steps": steps, "seed": 5}
        _, before = app.generate(**inputs)
        switch_s, styled = app.generate(**inputs, loras=[{"name": "style", "scale": 0.8}])
        _, after = app.generate(**inputs)
        figures["lora"] = {"switch_and_image_s": switch_s, "changes_the_image": digest(styled) != digest(before),
                           "restored_bit_for_bit": digest(after) == digest(before)}
        figures["progress"] = progress_lead(app, size, 40 if run.smoke else run.steps)  # lead: a fraction of steps
        if not run.smoke:
            worst = [app.generate(width=w, height=h, num_images=4, num_inference_steps=4)[1]["width"]
                     for w, h in ((1024, 1024), (768, 768), (1024, 512))]
            figures["largest_requests"] = {"served": len(worst), "healthz": health(app)}
    finally:
        app.stop()
        plain.stop()
    for name in (n for n in figures if "levels_from_plain" in figures[n]):
        expect(figures[name]["levels_from_plain"] <= 2, f"{name}: not plain diffusers' image")
    expect(figures["four_images"]["images"] == 4, "four images asked, not four answered")
    expect(all(figures[n]["reproduces"] for n in ("img2img", "controlnet")), "img2img or ControlNet does not "
           "reproduce under CUDA graphs")
    expect(figures["controlnet"]["mode"] == "controlnet", "the control image did not choose ControlNet")
    expect(figures["lora"]["changes_the_image"] and figures["lora"]["restored_bit_for_bit"], "the LoRA's path")
    expect(figures["progress"]["lead_fraction"] < 0.25, "progress ran ahead of the GPU")
    expect(figures["progress"]["previews"] > 0, "no preview under CUDA graphs")
    return figures


def progress_lead(app: App, size: int, steps: int) -> dict:
    """How long before its answer a request's progress said it was (nearly) done: Euler never waits on the GPU, so
    progress told from the CPU alone ran ahead, to N/N with the GPU mid-way."""
    import httpx

    seen, done = [], threading.Event()

    def watch():
        while not done.wait(0.003):
            snapshot = httpx.get(app.url + "/progress").json()
            if snapshot.get("running"):
                seen.append((time.perf_counter(), snapshot["step"], snapshot["total_steps"], snapshot["preview"]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    _, answer = app.generate(width=size, height=size, num_inference_steps=steps, seed=2, scheduler="euler")
    ended = time.perf_counter()
    done.set()
    watcher.join()
    nearly = [t for t, step, total, _ in seen if total > 1 and step >= total - 1]  # total 1: before the first step
    lead = ended - nearly[0] if nearly else 0.0
    return {"lead_s": round(lead, 3), "lead_fraction": lead / (ended - started), "snapshots": len(seen),
            "previews": len({preview for *_, preview in seen if preview}),
            "inference_ms": answer["timings"]["inference_ms"]}


def sd15_compile(run: Run, figures: dict) -> dict:
    """COMPILE=1 on SD 1.5 at 512: its cold start from scratch into its COMPILE_CACHE, then from that cache (a new
    container on the same volume), its speed, and no fallback at the compiled size."""
    size, steps = run.size, run.steps
    cache = {"COMPILE": "1", "COMPILE_CACHE": str(run.root / "compile-cache"), "COMPILE_SIZES": f"{size}x{size}"}
    for name in ("from_scratch", "from_its_cache"):
        app = run.app("sd15", **cache)
        try:
            first_s, _ = app.generate(width=size, height=size, num_inference_steps=steps, seed=0)
            seconds, _ = timed(app, width=size, height=size, num_inference_steps=steps, seed=0)
            figures[name] = {"cold_s": app.cold_s, "first_request_s": first_s, "s": seconds,
                             "compiled": health(app)["compiled"]}
        finally:
            app.stop()
    expect(all(figures[n]["compiled"]["fallbacks"] == 0 for n in figures), "a request at the compiled size fell back")
    return figures


def compile_paths(run: Run, figures: dict) -> dict:
    """COMPILE=1 off its benchmarked path, on the tiny model (the path, not the speed): PNDM without guidance (its
    compiled outputs outlive the next call), a LoRA fused into compiled weights, previews between compiled steps,
    variants the warm-up did not compile (each runs the CUDA-graph path, compiling nothing), and a transformer."""
    sd = run.model("tiny-sd")
    env = {"COMPILE": "1", "COMPILE_SIZES": "256x256", "DEFAULT_GUIDANCE_SCALE": "1", "LORAS_DIR": str(run.lora(
        "tiny-sd")), "PREVIEW_EVERY": "2", "PREVIEW_DECODER": str(run.model("tiny-taesd"))}
    app = App(sd, timeout=900, **(SMOKE_ENV if run.smoke else {}), **env)
    try:
        inputs = {"width": 256, "height": 256, "num_inference_steps": 8, "seed": 4}
        runs = [digest(app.generate(**inputs, scheduler="pndm")[1]) for _ in range(3)]
        figures["pndm_without_guidance_reproduces"] = len(set(runs)) == 1
        _, before = app.generate(**inputs)
        _, styled = app.generate(**inputs, loras=[{"name": "style"}])
        _, after = app.generate(**inputs)
        figures["lora"] = {"changes": digest(styled) != digest(before), "restored": digest(after) == digest(before)}
        figures["healthz_at_the_compiled_size"] = health(app)["compiled"]
        for name, extra in (("other_size", {"width": 384}), ("two_images", {"num_images": 2}),
                            ("guidance_on", {"guidance_scale": 7.0}), ("ddim", {"scheduler": "ddim"}),
                            *((f"size_{side}", {"width": side}) for side in range(128, 128 + 64 * 9, 64))):
            figures[name] = app.generate(**{**inputs, "num_inference_steps": 2, **extra})[1]["width"]
        figures["healthz_after_uncovered_variants"] = health(app)["compiled"]
    finally:
        app.stop()
    flux = App(run.model("flux"), timeout=900, COMPILE="1", **(SMOKE_ENV if run.smoke else {}))
    try:
        flux.generate(num_inference_steps=2, seed=1)
        figures["flux_transformer_compiled"] = health(flux)["compiled"]
    finally:
        flux.stop()
    expect(figures["pndm_without_guidance_reproduces"], "PNDM without guidance under COMPILE=1 does not reproduce")
    expect(figures["lora"]["changes"] and figures["lora"]["restored"], "a LoRA under COMPILE=1")
    expect(figures["healthz_at_the_compiled_size"]["fallbacks"] == 0, "the compiled size fell back")
    expect(figures["flux_transformer_compiled"]["fallbacks"] == 0 and figures["flux_transformer_compiled"][
        "variants"] >= 2, "FLUX.1's transformer did not run compiled")
    return figures


def families(run: Run, figures: dict) -> dict:
    """SDXL at 1024, 30 steps (float16, its VAE in bf16), and SD 3.5 Medium's and FLUX.1's widths at 1024 (bf16, a few
    blocks each): the app's default against plain diffusers, its speed, its image, its memory on a 24 GB card."""
    size = 64 if run.smoke else 1024
    cases = (("sdxl", "float16", run.steps if run.smoke else 30, {}), ("sd35", "bfloat16", 2 if run.smoke else 28, {}),
             ("flux", "bfloat16", 2 if run.smoke else 4, {}))  # SD 3.5's shape is saved without T5: DROP_T5's path
    for name, dtype, steps, env in cases:
        if run.left_s() < 60 and not run.smoke:
            figures[name] = {"not_run": "budget"}
            continue
        guidance = {"guidance_scale": 7.0} if name != "flux" else {}  # FLUX.1-schnell's shape takes none
        inputs = {"width": size, "height": size, "num_inference_steps": steps, "seed": 1, **guidance}
        plain = run.plain(name, dtype, size, steps)
        try:
            plain_s = median([plain.run() for _ in range(2)])
            _, theirs = plain.generate(**inputs)
        finally:
            plain.stop()
        app = run.app(name, **env)
        try:
            seconds, ours = timed(app, runs=2, **inputs)
            figures[name] = {"plain_s": plain_s, "app_s": seconds, "levels_from_plain": pixels_apart(ours, theirs),
                             "cold_s": app.cold_s, "healthz": health(app)}
        finally:
            app.stop()
        # SDXL's bf16 VAE, and bf16's rounding in the transformers: a few levels, never noise.
        expect(figures[name]["levels_from_plain"] <= 8, f"{name}: not plain diffusers' image")
        if not run.smoke:
            expect(seconds < plain_s * 1.05, f"{name}: the app slower than plain diffusers")
    return figures


CHECKS = (sd15_speed, sd15_paths, sd15_compile, compile_paths, families)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=450, help="seconds; no check starts after")
    parser.add_argument("--only", action="append", help="a check's name (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="the tiny models on the CPU, no speed bounds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "bench"))
    run = Run(args.out, args.budget, args.smoke)
    failed = []
    for check in CHECKS:
        if args.only and check.__name__ not in args.only:
            continue
        if args.smoke and check in (sd15_compile, compile_paths):
            run.record(check.__name__, {"not_run": "smoke: inductor takes minutes to compile on a CPU"})
            continue
        if run.left_s() <= 0:
            run.record(check.__name__, {"not_run": "budget", "ok": False})
            failed.append(check.__name__)
            continue
        started, figures = time.monotonic(), {}
        try:
            check(run, figures)
            figures["ok"] = True
        except Exception as error:  # noqa: BLE001 - record it and what was measured, go on with the next check
            figures |= {"ok": False, "error": f"{type(error).__name__}: {error}"[-1500:],
                        **({} if isinstance(error, Check) else {"trace": traceback.format_exc()[-3000:]})}
            failed.append(check.__name__)
        run.record(check.__name__, {**figures, "check_s": round(time.monotonic() - started, 1)})
    run.results["total_s"] = round(time.monotonic() - run.started, 1)
    run.record("summary", {"failed": failed, "ok": not failed})
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
