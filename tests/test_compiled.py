"""COMPILE=1 on the CPU: torch.compile's tracing, guards and recompiles are the same as on a GPU; the backends here
stand in for inductor's code generation (minutes) with what matters to the mechanism: counting compiles, and
holding outputs in memory the next call overwrites, as mode="reduce-overhead" (CUDA graphs) does. Inductor itself
runs in tests/test_loras.py and in the COMPILE_CACHE test below; bench/gpu.py runs all of it on a GPU."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serverless_sd import compiled, images, logs
from serverless_sd.compiled import Compiled
from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import parse
from serverless_sd.settings import REPO_ROOT as ROOT
from serverless_sd.settings import Settings, SettingsError
from testkit import model_factory, precision


class Counting:
    """A backend that counts what it is asked to compile, and runs the traced graph as it is."""

    def __init__(self):
        self.compiles = 0

    def __call__(self, graph, example_inputs):
        self.compiles += 1
        return graph.forward


def graph_memory(graph, example_inputs):
    """A backend whose outputs live in memory of its own, overwritten by its next call, as a CUDA graph's do."""
    held = []

    def run(*args):
        outputs = graph(*args)
        if not held:
            held.extend(torch.empty_like(o) if isinstance(o, torch.Tensor) else o for o in outputs)
        for buffer, output in zip(held, outputs, strict=True):
            if isinstance(output, torch.Tensor):
                buffer.copy_(output)
        return type(outputs)(held)

    return run


@pytest.fixture
def log(monkeypatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(logs, "_stream", stream)
    return stream


def image(model: StableDiffusion, **inputs) -> np.ndarray:
    inputs = {"prompt": "a", "num_inference_steps": 3, "seed": 1, **inputs}
    return np.asarray(model.generate(parse(inputs, model.limits)).images[0], dtype=np.int16)


def test_an_output_outlives_the_next_call():
    double = Compiled("double", lambda x: (x * 2,), fallback=None, backend=graph_memory)
    [first] = double(torch.ones(3))
    double(torch.full((3,), 5.0))
    assert torch.equal(first, torch.full((3,), 2.0))  # not 10: a copy, not the memory the second call wrote


def test_pndm_without_guidance_gives_the_eager_image(models, monkeypatch):
    """Without guidance the UNet's output goes to PNDM untouched, and PNDM keeps the last ones: under CUDA graphs each
    was overwritten by the next step (on a GPU: "accessing tensor output of CUDAGraphs that has been overwritten")."""
    settings = dict(model_id=str(models["sd"]), device="cpu", dtype="float32", default_guidance_scale=1.0)
    ours = StableDiffusion.load(Settings(**settings, compile=True), compile_backend=graph_memory)
    eager = StableDiffusion.load(Settings(**settings))
    ours.warm_up()  # compiles the model's default: guidance off, batch 1
    inputs = {"scheduler": "pndm", "num_inference_steps": 6}
    assert np.abs(image(ours, **inputs) - image(eager, **inputs)).max() <= 2  # fused QKV, channels_last: rounding
    assert not any(c.fallen for c in ours.compiled)  # it was the compiled code that ran
    monkeypatch.setattr(compiled, "copied", lambda output: output)  # the outputs as the graph left them
    assert np.abs(image(ours, **inputs) - image(eager, **inputs)).mean() > 1


def test_the_warm_up_compiles_every_listed_variant_and_requests_compile_nothing(models, log):
    backend = Counting()
    settings = Settings(model_id=str(models["sd"]), controlnet_id=str(models["controlnet"]), device="cpu",
                        dtype="float32", compile=True, warm_up="off", compile_sizes="128x64", compile_images="1,2")
    model = StableDiffusion.load(settings, compile_backend=backend)
    eager = StableDiffusion.load(settings.model_copy(update={"compile": False}))
    # WARM_UP=off notwithstanding: a request must never wait for a compile.
    assert [(i.width, i.height, i.num_images) for i in model.warm_ups] == [(128, 64, 1), (128, 64, 2)]
    assert model.warm_up()
    assert backend.compiles == 4 and [len(c.variants) for c in model.compiled] == [2, 2]  # UNet and VAE decoder

    # DDIM's integer timesteps and Euler's float ones: the same variant as PNDM's.
    for inputs in ({}, {"num_images": 2, "scheduler": "ddim"}, {"scheduler": "euler"}):
        inputs |= {"width": 128, "height": 64}
        assert np.abs(image(model, **inputs) - image(eager, **inputs)).max() <= 2  # fused QKV
    assert not log.getvalue() and not any(c.fallen for c in model.compiled)

    others = [{}, {"width": 128, "height": 64, "guidance_scale": 1.0}, {"width": 128, "height": 64, "num_images": 3},
              {"width": 128, "height": 64, "control_image": picture(128, 64)}]  # ControlNet's residuals: more inputs
    for inputs in others:
        assert np.abs(image(model, **inputs) - image(eager, **inputs)).max() <= 2
    for width in range(192, 192 + 64 * 8, 64):  # past torch's limit of 8 recompiles, which raises for good
        image(model, width=width, height=64, num_inference_steps=1)
    assert backend.compiles == 4  # nothing compiled inside a request
    fallbacks = [json.loads(line) for line in log.getvalue().splitlines() if '"compile_fallback"' in line]
    assert {f["function"] for f in fallbacks} == {"unet", "vae_decode"} and all(f["reason"] for f in fallbacks)
    assert "len(kwargs)" in fallbacks[-8 * 2 - 1]["reason"]  # ControlNet's, just before the sizes
    for _ in range(2):  # a variant met before (the VAE decoder is given a new generator each time): not logged again
        image(model)
    assert log.getvalue().count('"compile_fallback"') == len(fallbacks)
    assert compiled.status()["fallbacks"] >= sum(len(c.fallen) for c in model.compiled) == len(fallbacks)


def picture(width: int, height: int) -> str:
    return images.to_data_uri(Image.new("RGB", (width, height), (128, 128, 128)), "png")


def test_a_listed_size_the_model_cannot_take_stops_the_start_naming_it(models):
    settings = precision.settings(model_id=str(models["sd"]), compile=True, compile_sizes="64x64,100x64")
    with pytest.raises(SettingsError, match=r"COMPILE_SIZES, COMPILE_IMAGES: 100x64 with 1 image\(s\) .*width"):
        StableDiffusion.load(settings, compile_backend="eager")
    with pytest.raises(SettingsError, match="COMPILE_SIZES, COMPILE_IMAGES: 64x64 with 9 image"):
        StableDiffusion.load(settings.model_copy(update={"compile_sizes": "", "compile_images": "9"}),
                             compile_backend="eager")
    with pytest.raises(ValueError, match="compile_sizes"):
        Settings(compile_sizes="512*512")


COMPILE_ONCE = """
import sys
import torch
from serverless_sd.compiled import Cache
cache = Cache(__import__("pathlib").Path(sys.argv[1]))
cache.use()
double_sine = torch.compile(lambda x: (x.sin() * 2).cos(), fullgraph=True)
print(double_sine(torch.arange(8.0)).tolist(), file=sys.stderr)
cache.report()
"""


def test_the_compile_cache_carries_inductors_code_to_the_next_start(tmp_path):
    """COMPILE_CACHE with inductor itself (on the CPU; a small function, as the UNet takes minutes): the first
    process compiles into the folder; the next compiles nothing anew. The app's warm-up runs the same calls around
    its compiles (bench/compile_cache.py measures that with the SD-1.5-sized model)."""
    folder = tmp_path / "volume" / "compiled"
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    runs = []
    for _ in ("first", "next"):
        out = subprocess.run([sys.executable, "-c", COMPILE_ONCE, str(folder)], capture_output=True, text=True,
                             timeout=300, cwd=ROOT, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stderr.splitlines()
        runs.append((json.loads(next(line for line in lines if '"compile_cache"' in line)), lines[0]))
    (first, first_values), (after, after_values) = runs
    assert (first["hits"], first["misses"]) == (0, 1) and (after["hits"], after["misses"]) == (1, 0)
    assert first_values == after_values and any((folder / "inductor").rglob("*.so"))  # the kernels built, kept


def test_a_compile_cache_the_app_cannot_write_costs_a_compile_not_the_start(models, tmp_path, log):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    settings = precision.settings(model_id=str(models["sd"]), compile=True, compile_cache=taken / "compiled")
    model = StableDiffusion.load(settings, compile_backend="eager")
    assert model.warm_up() and all(c.variants for c in model.compiled)
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["compile_cache_unusable", "compile_cache"]
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == before  # torch's own default, untouched


@pytest.fixture(scope="module")
def sd35(tmp_path_factory) -> dict[str, Path]:
    """SD 3.5-shaped tiny models: Large's QK RMSNorm, and Medium's with dual-attention layers too."""
    root = tmp_path_factory.mktemp("sd35")
    return {"large": model_factory.save_tiny_sd3(root / "large", **model_factory.SD35_LARGE),
            "medium": model_factory.save_tiny_sd3(root / "medium", **model_factory.SD35_MEDIUM)}


@pytest.mark.parametrize("shape", ["large", "medium"])
def test_sd35_compiles_to_the_images_it_makes_without(sd35, shape):
    """diffusers' fused joint attention skipped SD 3.5's QK norms (other images) and failed on Medium's dual
    attention at the warm-up (the app never started): SD 3's projections stay unfused (Family.fuse_qkv)."""
    settings = precision.settings(model_id=str(sd35[shape]), dtype="float32")
    eager = StableDiffusion.load(settings)
    ours = StableDiffusion.load(settings.model_copy(update={"compile": True}), compile_backend="eager")
    assert ours.warm_up() and not any(c.fallen for c in ours.compiled)
    for inputs in ({}, {"num_images": 2, "seed": 9}):
        assert np.abs(image(ours, **inputs) - image(eager, **inputs)).max() <= 1


def storage_bytes(module: torch.nn.Module) -> int:
    return sum(p.untyped_storage().nbytes() for p in module.parameters())


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_fused_projections_leave_no_unfused_copy_behind(models, family):
    """The fused weights replace the projections they came from: the denoiser holds what it held before, not that
    twice over (SDXL's UNet: 1.2 GiB more, FLUX.1's transformer: 4.0 GiB), and each projection keeps its shape
    (a LoRA's rows in the fused weight are read from it)."""
    settings = precision.settings(model_id=str(models[family]), compile=True, warm_up="off")
    unfused = StableDiffusion.load(settings.model_copy(update={"compile": False}))
    ours = StableDiffusion.load(settings, compile_backend="eager")
    denoiser, theirs = ours.family.denoiser_of(ours.pipe), unfused.family.denoiser_of(unfused.pipe)
    fused = [m for m in denoiser.modules() if getattr(m, "fused_projections", False)]
    assert fused and storage_bytes(denoiser) <= storage_bytes(theirs) + 4096  # a number kept per projection
    shapes = {name: p.shape for name, p in theirs.named_parameters()}
    assert all(shapes[name] == p.shape for name, p in denoiser.named_parameters() if name in shapes)
    assert np.abs(image(ours) - image(unfused)).max() <= 1


def test_more_variants_than_torchs_recompile_limit_compile_at_the_warm_up(models):
    """torch.compile stops at its recompile limit, 8 variants of a function (FailOnRecompileLimitHit, after minutes of
    compiling on a GPU): the limit is raised to the plan's size. Here the limit is lowered to 2, and the plan lists 3:
    the same mechanism at a third of the tracing."""
    sizes = ",".join(f"{64 + 8 * i}x64" for i in range(3))
    backend = Counting()
    with torch._dynamo.config.patch(recompile_limit=2):
        model = StableDiffusion.load(precision.settings(model_id=str(models["sd"]), compile=True, compile_sizes=sizes,
                                                        default_guidance_scale=1.0), compile_backend=backend)
        assert model.warm_up() and [len(c.variants) for c in model.compiled] == [3, 3]
    assert backend.compiles == 6


def test_compile_leaves_the_weights_as_they_load_for_the_paths_that_run_eager(models):
    """The fallback, ControlNet, the VAE's encoder and the safety checker share the compiled modules' weights, and
    run slower in channels_last: inductor chooses the compiled graphs' layout itself."""
    model = StableDiffusion.load(precision.settings(model_id=str(models["sd_checked"]), compile=True, warm_up="off",
                                                    dtype="float32", controlnet_id=str(models["controlnet"])),
                                 compile_backend="eager")
    convolutions = [m.weight for part in (model.pipe.unet, model.pipe.vae, model.controlnet) for m in part.modules()
                    if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous() for w in convolutions)
    assert all(p.is_contiguous() for p in model.safety[0].parameters())
