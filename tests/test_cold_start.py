"""serverless_sd/cold_start.py: a replica's start split into its phases, and its weights read while it imports."""

import os
import subprocess
import sys

import httpx

from serverless_sd import cold_start, weights
from serverless_sd.cold_start import PHASES, ColdStart
from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import parse
from testkit import model_factory, precision
from testkit.processes import ROOT


def test_the_processes_age_counts_from_its_start_not_from_the_import():
    child = ("import time; time.sleep(1.5); from serverless_sd.cold_start import process_age_s; "
             "print(process_age_s())")
    environment = {name: value for name, value in os.environ.items() if name != "MODEL_ID"}
    out = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**environment, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert 1.5 <= float(out.stdout) < 300


def test_the_weights_read_ahead_are_exactly_those_the_load_needs(tmp_path):
    """A folder holding each component twice (fp32 and the fp16 variant) and a safety checker the settings turn
    off: the files read ahead are the fp16 ones of the components loaded, and with every other weight file deleted
    the app still loads and serves."""
    folder = model_factory.save_tiny_sd(tmp_path / "sd", safety_checker=True)
    model_factory.save_tiny_sd(tmp_path / "sd-fp16", safety_checker=True)
    for path in (tmp_path / "sd-fp16").rglob("*.safetensors"):
        variant = path.with_name(path.name.replace(".safetensors", ".fp16.safetensors"))
        path.rename(folder / path.parent.name / variant.name)
    files = weights.weight_files(folder, {"safety_checker"})
    assert sorted(f"{path.parent.name}/{path.name}" for path in files) == [
        "text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert "safety_checker" in {path.parent.name for path in weights.weight_files(folder)}
    for path in set(folder.rglob("*.safetensors")) - set(files):
        path.unlink()
    model = StableDiffusion.load(precision.settings(model_id=str(folder), safety_checker=False))
    assert model.generate(parse({"prompt": "a", "num_inference_steps": 1}, model.limits)).images


def test_a_model_too_large_for_the_page_cache_is_not_read_ahead(models, monkeypatch):
    files = weights.weight_files(models["sd"])
    started = ColdStart()
    started.read_ahead(files)
    started.wait_for_weights()
    assert started.phases["read_bytes"] == sum(path.stat().st_size for path in files) > 0
    assert started.phases["read_weights"] >= 0 and started.phases["waited_for_weights"] >= 0
    monkeypatch.setattr(cold_start, "available_bytes", lambda: sum(path.stat().st_size for path in files))
    skipped = ColdStart()
    skipped.read_ahead(files)
    assert skipped.phases["read_ahead"].startswith("skipped: ") and "read_bytes" not in skipped.phases
    skipped.wait_for_weights()  # nothing to wait for
    assert "waited_for_weights" not in skipped.phases


def test_a_replica_names_every_phase_of_its_start_and_logs_one_cold_start_event(models, start_app):
    app = start_app({"MODEL_ID": str(models["sd"])})
    before = httpx.get(app.url + "/healthz").json()["cold_start"]
    assert list(before)[:len(PHASES)] == list(PHASES)
    assert before["cuda_init"] is None and before["first_request"] is None  # no GPU here; no request yet
    started = [name for name in PHASES if name not in ("cuda_init", "first_request")]
    assert all(before[name] >= 0 for name in started), before
    assert before["ready"] >= before["imports"] + before["build_modules"]
    assert before["read_bytes"] == sum(path.stat().st_size for path in weights.weight_files(models["sd"]))
    for _ in range(2):
        assert app.post({"prompt": "a", "num_inference_steps": 1}).status_code == 200
    [event] = app.events("cold_start")
    after = httpx.get(app.url + "/healthz").json()["cold_start"]
    assert 0 < event["first_request"] == after["first_request"]
    assert {name: event[name] for name in PHASES} == {name: after[name] for name in PHASES}
