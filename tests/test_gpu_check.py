"""bench/gpu.py, where no GPU is: its real-width models fit together at 1024 (on PyTorch's meta device: shapes, no
memory), and its checks run end to end on the CPU with the tiny models (--smoke), so that the lent GPU machine's one
run finds a harness that works. What only a GPU shows (speed, CUDA graphs, compile) is asserted there."""

import json
import sys

import pytest
import torch

from testkit import model_factory, processes


def meta(*shape) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


@pytest.mark.parametrize("build, call, latents", [
    (model_factory.sdxl_sized, lambda pipe: pipe.unet(
        meta(2, 4, 128, 128), meta(2), encoder_hidden_states=meta(2, 77, 2048),
        added_cond_kwargs={"text_embeds": meta(2, 1280), "time_ids": meta(2, 6)}).sample, (2, 4, 128, 128)),
    (model_factory.sd35_shaped, lambda pipe: pipe.transformer(
        hidden_states=meta(2, 16, 128, 128), encoder_hidden_states=meta(2, 154, 4096), pooled_projections=meta(2, 2048),
        timestep=meta(2)).sample, (2, 16, 128, 128)),
    (model_factory.flux_shaped, lambda pipe: pipe.transformer(
        hidden_states=meta(1, 4096, 64), encoder_hidden_states=meta(1, 512, 4096), pooled_projections=meta(1, 768),
        timestep=meta(1), txt_ids=meta(512, 3), img_ids=meta(4096, 3)).sample, (1, 4096, 64)),
], ids=["sdxl", "sd35", "flux"])
def test_the_gpu_checks_real_width_models_fit_together_at_1024(build, call, latents):
    """The denoiser takes what its pipeline's text encoders give at 1024x1024 (CLIP-L + CLIP-G: SDXL's 2048 and
    its pooled 1280; SD 3's padded 4096 and pooled 2048; FLUX.1's T5 4096 and CLIP's pooled 768) and answers the
    latents' shape; the VAE decodes 1024 pixels."""
    pipe = build("meta")
    with torch.no_grad():
        assert tuple(call(pipe).shape) == latents
        channels = pipe.vae.config.latent_channels
        assert tuple(pipe.vae.decode(meta(1, channels, 128, 128)).sample.shape) == (1, 3, 1024, 1024)
    if hasattr(pipe, "text_encoder_2"):  # the pooled projection the denoiser reads
        pooled = pipe.text_encoder_2(torch.zeros(1, 77, dtype=torch.long, device="meta"))
        assert pooled[0].shape[-1] in (1280, 4096)


def test_every_check_runs_end_to_end_on_the_cpu(tmp_path):
    result = processes.run([sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(tmp_path)], timeout=900,
                           cwd=processes.ROOT)
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert result.returncode == 0, json.dumps(report["checks"], indent=1)[-4000:] + result.stderr[-2000:]
    checks = report["checks"]
    assert checks["summary"]["ok"] and {"sd15_speed", "sd15_paths", "families"} <= {
        name for name, check in checks.items() if check.get("ok")}
    paths = checks["sd15_paths"]
    assert paths["four_images"]["images"] == 4 and paths["controlnet"]["mode"] == "controlnet"
    assert paths["lora"]["restored_bit_for_bit"] and paths["progress"]["previews"] > 0
    assert all(checks["families"][family]["levels_from_plain"] <= 8 for family in ("sdxl", "sd35", "flux"))


def test_plain_diffusers_processes_keep_the_python_path_they_were_given(tmp_path, monkeypatch):
    """On the lent GPU machine the carried wheels are on PYTHONPATH: a plain diffusers process started without them
    found no diffusers (the first call of 2026-12-04 lost three checks to it)."""
    from bench.common import ROOT, with_root_on_path

    carried = tmp_path / "carried"
    carried.mkdir()
    (carried / "carried_probe.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(carried))
    env = with_root_on_path()
    assert env["PYTHONPATH"].split(":")[0] == str(ROOT)
    found = processes.run([sys.executable, "-c", "import carried_probe, bench.common"], env=env, timeout=60,
                          cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    monkeypatch.delenv("PYTHONPATH")
    assert with_root_on_path()["PYTHONPATH"] == str(ROOT)
