"""download.py end to end against a local server that answers like the hub, then app.py loading what it baked."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline

from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import parse
from testkit import precision
from testkit.fake_hub import FakeHub
from testkit.processes import ROOT, free_port


@pytest.fixture(scope="module")
def hub(models, tmp_path_factory):
    # A repo laid out like most on the hub: fp32 and fp16 safetensors, plus legacy .bin duplicates.
    repo = tmp_path_factory.mktemp("hub") / "tiny-with-variants"
    pipe = StableDiffusionPipeline.from_pretrained(models["sd"])
    pipe.save_pretrained(repo, safe_serialization=False)
    pipe.save_pretrained(repo)
    pipe.to(torch.float16).save_pretrained(repo, variant="fp16")
    server = FakeHub()
    server.add("acme/tiny", repo)
    server.add("acme/fp32-only", models["sd"])
    server.add("acme/private", models["sd"], token="hf_private_token_1")
    server.add("acme/gated", models["sd"], gated=True)
    # SD 3.5's and FLUX.1's repos also hold single-file checkpoints (and their text encoders) at the top.
    sd3 = tmp_path_factory.mktemp("hub") / "tiny-sd3"
    shutil.copytree(models["sd3"], sd3, dirs_exist_ok=True)
    for name in ("sd3.5_medium.safetensors", "text_encoders/t5xxl_fp16.safetensors"):
        (sd3 / name).parent.mkdir(exist_ok=True)
        (sd3 / name).write_bytes(b"a single-file checkpoint the pipeline never opens")
    server.add("acme/sd3", sd3)
    yield server
    server.close()


def download(hub, model_id, models_dir, **env):
    hub.downloaded.clear()
    full_env = {**os.environ, "HF_ENDPOINT": hub.url, "MODEL_ID": model_id, "MODELS_DIR": str(models_dir), **env}
    full_env.pop("HF_HUB_OFFLINE", None)
    full_env.pop("HF_TOKEN", None) if "HF_TOKEN" not in env else None
    return subprocess.run([sys.executable, "download.py"], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=300)


def test_downloads_only_the_fp16_safetensors_the_pipeline_loads_then_the_app_serves_offline(hub, tmp_path, start_app):
    result = download(hub, "acme/tiny", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Fetching" in result.stderr  # huggingface_hub's progress bar
    weights = [name for name in hub.downloaded if not name.endswith((".json", ".txt"))]
    assert sorted(weights) == [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    # At run time the hub is unreachable (a closed port) and switched off: the app loads what was baked.
    app = start_app({"MODEL_ID": "acme/tiny", "MODELS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1",
                     "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert app.post({"prompt": "a boat", "num_inference_steps": 1}).status_code == 200


def test_an_image_without_weights_serves_a_model_from_the_hosts_cache(hub, tmp_path, start_app):
    """RunPod's cached models: the hub cache's own layout (models--acme--tiny/snapshots/<rev>/) in a folder of the
    host's, searched after MODELS_DIR, which holds nothing here (an image built with BAKE_WEIGHTS=0)."""
    cache = tmp_path / "huggingface-cache" / "hub"
    assert download(hub, "acme/tiny", cache).returncode == 0
    assert [p.name for p in cache.iterdir() if p.name.startswith("models--")] == ["models--acme--tiny"]
    (tmp_path / "baked").mkdir()
    app = start_app({"MODEL_ID": "acme/tiny", "MODELS_DIR": str(tmp_path / "baked"), "CACHED_MODELS_DIR": str(cache),
                     "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert app.post({"prompt": "a boat", "num_inference_steps": 1}).status_code == 200
    assert not list((tmp_path / "baked").iterdir())


def test_sd3_with_drop_t5_gets_neither_t5_nor_the_single_files_and_loads_offline(hub, tmp_path, monkeypatch):
    result = download(hub, "acme/sd3", tmp_path, DROP_T5="1")
    assert result.returncode == 0, result.stderr
    weights = sorted(name for name in hub.downloaded if name.endswith(".safetensors"))
    assert weights == ["text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
                       "transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = StableDiffusion.load(precision.settings(model_id="acme/sd3", models_dir=tmp_path, drop_t5=True))
    assert model.family.name == "sd3" and model.pipe.text_encoder_3 is None
    assert model.generate(parse({"prompt": "a", "num_inference_steps": 2}, model.limits)).images[0].size == (64, 64)


def test_a_repo_without_fp16_files_gets_its_fp32_safetensors_and_a_second_run_nothing(hub, tmp_path):
    assert download(hub, "acme/fp32-only", tmp_path).returncode == 0
    assert "unet/diffusion_pytorch_model.safetensors" in hub.downloaded
    assert download(hub, "acme/fp32-only", tmp_path).returncode == 0
    assert not [name for name in hub.downloaded if name.endswith(".safetensors")]


@pytest.mark.parametrize("model_id, env, message", [
    ("acme/missing", {}, "was not found on the Hugging Face hub"),
    ("acme/private", {}, "pass a token that can read it as HF_TOKEN"),
    ("acme/private", {"HF_TOKEN": "hf_wrong"}, "pass a token that can read it as HF_TOKEN"),
    ("acme/gated", {}, "is gated"),
])
def test_a_repo_that_cannot_be_had_fails_the_build_with_a_clear_message(hub, tmp_path, model_id, env, message):
    result = download(hub, model_id, tmp_path, **env)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "hf_wrong" not in result.stderr + result.stdout


@pytest.mark.parametrize("variable", ["MODEL_ID", "CONTROLNET_ID"])
def test_a_repo_with_only_bin_weights_is_refused(hub, models, tmp_path, variable):
    legacy = tmp_path / "legacy"
    if variable == "MODEL_ID":
        StableDiffusionPipeline.from_pretrained(models["sd"]).save_pretrained(legacy, safe_serialization=False)
        model_id, env = "acme/bin-only", {}
    else:
        from diffusers import ControlNetModel

        ControlNetModel.from_pretrained(models["controlnet"]).save_pretrained(legacy, safe_serialization=False)
        model_id, env = "acme/fp32-only", {"CONTROLNET_ID": "acme/bin-only-controlnet"}
    hub.add("acme/bin-only" if variable == "MODEL_ID" else "acme/bin-only-controlnet", legacy)
    result = download(hub, model_id, tmp_path / "models", **env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{variable} 'acme/bin-only" in result.stderr and "loads safetensors only" in result.stderr
    assert not [name for name in hub.downloaded if name.endswith(".bin")]


def test_no_network_is_one_line_that_says_what_to_do(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "MODEL_ID": "acme/anything",
           "MODELS_DIR": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "download.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "cannot reach the Hugging Face hub" in result.stderr and "make demo" in result.stderr


def test_hf_token_is_honoured(hub, tmp_path):
    assert download(hub, "acme/private", tmp_path, HF_TOKEN="hf_private_token_1").returncode == 0


def test_a_local_folder_needs_no_download(models, tmp_path):
    result = subprocess.run([sys.executable, "download.py"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "MODEL_ID": str(models["sd"]), "MODELS_DIR": str(tmp_path)})
    assert result.returncode == 0 and "is ready in" in result.stdout and not list(tmp_path.iterdir())


def test_the_app_refuses_to_start_without_baked_weights(start_app, tmp_path):
    (tmp_path / "cache").mkdir()
    app = start_app({"MODEL_ID": "acme/never-downloaded", "MODELS_DIR": str(tmp_path),
                     "CACHED_MODELS_DIR": str(tmp_path / "cache")}, wait=False)
    assert app.proc.wait(120) != 0
    assert "run `python3 download.py` with the same MODEL_ID" in app.logs()
    assert f"is not in {tmp_path} nor in {tmp_path / 'cache'}" in app.logs() and "cached model" in app.logs()


def test_safety_checker_off_skips_its_weights(hub, models, tmp_path):
    hub.add("acme/checked", models["sd_checked"])
    assert download(hub, "acme/checked", tmp_path / "on").returncode == 0
    assert "safety_checker/model.safetensors" in hub.downloaded
    assert download(hub, "acme/checked", tmp_path / "off", SAFETY_CHECKER="off").returncode == 0
    assert not [name for name in hub.downloaded if name.startswith("safety_checker/")]


def baked_beside_the_model(hub, tmp_path, start_app, announced: str, **env: str):
    """download.py with env, which bakes a one-model repo (config and weights) beside the model; then the app on
    what it baked, with no hub to reach."""
    result = download(hub, "acme/fp32-only", tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert announced in result.stdout
    assert {"config.json", "diffusion_pytorch_model.safetensors"} <= set(hub.downloaded)
    return start_app({"MODEL_ID": "acme/fp32-only", "MODELS_DIR": str(tmp_path), **env,
                      "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})


def test_controlnet_id_is_baked_too_and_served_offline(hub, models, tmp_path, start_app):
    hub.add("acme/controlnet", models["controlnet"])
    app = baked_beside_the_model(hub, tmp_path, start_app, "ControlNet acme/controlnet is ready",
                                 CONTROLNET_ID="acme/controlnet")
    from test_modes import picture, uri

    answer = app.post({"prompt": "a", "num_inference_steps": 1, "control_image": uri(picture(64, 64))})
    assert answer.status_code == 200 and answer.json()["mode"] == "controlnet"


def test_the_familys_preview_decoder_is_baked_with_preview_every_and_served_offline(hub, models, tmp_path,
                                                                                    start_app):
    hub.add("madebyollin/taesd", models["taesd"])  # SD 1.x's TAESD, where the hub keeps it
    app = baked_beside_the_model(hub, tmp_path, start_app, "the preview decoder madebyollin/taesd is ready",
                                 PREVIEW_EVERY="2")
    assert app.post({"prompt": "a", "num_inference_steps": 3}).status_code == 200
    assert download(hub, "acme/fp32-only", tmp_path / "none").returncode == 0
    assert list(tmp_path.glob("*taesd*")) and not list((tmp_path / "none").glob("*taesd*"))  # off: not baked


def test_lora_ids_are_baked_by_name_and_served_offline(hub, models, tmp_path):
    from testkit.model_factory import save_tiny_lora

    loras = tmp_path / "lora-repos"
    save_tiny_lora(models["sd"], loras / "one" / "pytorch_lora_weights.safetensors", seed=1)
    save_tiny_lora(models["sd"], loras / "two" / "a.safetensors", seed=2)
    save_tiny_lora(models["sd"], loras / "two" / "b.safetensors", seed=3)
    local = save_tiny_lora(models["sd"], loras / "local" / "watercolor.safetensors", seed=4)
    hub.add("acme/style-lora", loras / "one")
    hub.add("acme/two-loras", loras / "two")
    baked = tmp_path / "baked"
    result = download(hub, "acme/fp32-only", baked,
                      LORA_IDS=f"acme/style-lora, ink=acme/two-loras/b.safetensors,{local}")
    assert result.returncode == 0, result.stderr
    assert "LoRA ink is ready" in result.stdout
    assert sorted(path.name for path in (baked / "loras").iterdir()) == [
        "ink.safetensors", "style-lora.safetensors", "watercolor.safetensors"]
    assert (baked / "loras" / "ink.safetensors").read_bytes() == (loras / "two" / "b.safetensors").read_bytes()
    model = StableDiffusion.load(precision.settings(model_id="acme/fp32-only", models_dir=baked))
    assert model.loras.listing()["loras"][0] == {"name": "ink", "bytes": (baked / "loras" / "ink.safetensors")
                                                 .stat().st_size}
    inputs = {"prompt": "a", "num_inference_steps": 1, "seed": 1}
    plain = model.generate(parse(inputs, model.limits)).images[0]
    styled = model.generate(parse({**inputs, "loras": [{"name": "style-lora"}]}, model.limits)).images[0]
    assert plain.tobytes() != styled.tobytes()


@pytest.mark.parametrize("lora_ids, message", [
    ("acme/two-loras", "holds 2 .safetensors files at its top: name one, as acme/two-loras/<file>.safetensors"),
    ("acme/nope", "LORA_IDS 'acme/nope' cannot be had: RepositoryNotFoundError"),
    ("acme/two-loras/a.bin", "LoRAs load from .safetensors files only"),
    ("bad name=acme/two-loras/a.safetensors", "'bad name' cannot name a LoRA"),
])
def test_a_lora_id_that_cannot_be_baked_fails_the_build_saying_why(hub, tmp_path, lora_ids, message):
    result = download(hub, "acme/fp32-only", tmp_path, LORA_IDS=lora_ids)
    assert result.returncode != 0 and message in result.stderr, result.stderr
