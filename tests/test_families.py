"""SD 3 and FLUX.1 beside SD 1.x/2.x and SDXL: the family read from the model, what each family takes and refuses,
every mode, seeds, the memory settings, and the whole path (app.py, the gateway, test.py) for both."""

import json
import shutil
import sys
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForText2Image
from PIL import Image
from test_clients import KEYS, client_env, run

from serverless_sd import families
from serverless_sd.families import FamilyError
from serverless_sd.pipelines import StableDiffusion, size_multiple
from serverless_sd.schema import InputError, parse
from serverless_sd.settings import Settings
from testkit import precision
from testkit.spies import Calls, relative

from test_modes import picture, uri

FLOW = ("sd3", "flux")
FAST = {"prompt": "a red cube", "num_inference_steps": 3, "width": 64, "height": 64}


def load(models, family: str, **settings) -> StableDiffusion:
    return StableDiffusion.load(precision.settings(model_id=str(models[family]), **settings))


@pytest.fixture(scope="module")
def loaded(models) -> dict[str, StableDiffusion]:
    """Each flow-matching family, in the tests' dtype, with its ControlNet."""
    return {family: load(models, family, controlnet_id=str(models[f"{family}_controlnet"])) for family in FLOW}


def generate(model: StableDiffusion, **inputs):
    return model.generate(parse({**FAST, **inputs}, model.limits))


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def differs(a: Image.Image, b: Image.Image) -> bool:
    return np.abs(array(a) - array(b)).mean() > 0.5


def given_to_the_transformer(model: StableDiffusion, **inputs) -> Calls:
    """One generation, and what its transformer was called with at each step."""
    with Calls(model.pipe.transformer) as transformer:
        generate(model, **inputs)
    return transformer


def timesteps(calls: Calls) -> list[float]:
    return [float(t.flatten()[0]) for t in calls.each("timestep")]


CONTROLNET_INPUT = {"sd3": "block_controlnet_hidden_states", "flux": "controlnet_block_samples"}


def refusal(model: StableDiffusion, **inputs) -> dict[str, str]:
    with pytest.raises(InputError) as caught:
        parse({"prompt": "a", **inputs}, model.limits)
    return dict(caught.value.errors)


def test_the_family_is_read_from_model_index(models, tmp_path):
    assert [families.of(models[name]).name for name in ("sd", "sd_inpainting", "sdxl", "sd3", "flux")] == [
        "sd", "sd", "sdxl", "sd3", "flux"]
    other = tmp_path / "kandinsky"
    shutil.copytree(models["sd"], other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(FamilyError, match="is a KandinskyV22Pipeline: this template serves SD 1.x/2.x .* FLUX.1"):
        StableDiffusion.load(Settings(model_id=str(other), device="cpu"))


@pytest.mark.parametrize("family", FLOW)
def test_it_generates_what_plain_diffusers_generates(models, family):
    """The same folder through plain diffusers, the same seed: the same pixels (the inputs reach the pipeline)."""
    model = load(models, family, dtype="float32")
    ours = generate(model, seed=5, guidance_scale=1.0).images[0]
    plain = AutoPipelineForText2Image.from_pretrained(models[family], torch_dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    theirs = plain(prompt=FAST["prompt"], num_inference_steps=3, guidance_scale=1.0, width=64, height=64,
                   generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(array(ours), array(theirs))


@pytest.mark.parametrize("family", FLOW)
def test_every_mode_and_seeds(loaded, family):
    model = loaded[family]
    pair = generate(model, seed=11, num_images=2)
    assert pair.family == family and pair.seeds == [11, 12] and [i.size for i in pair.images] == [(64, 64)] * 2
    alone = generate(model, seed=12).images[0]
    # Image i regenerates alone from seeds[i] (a batch of one runs other kernels: a rounding apart, in bf16); its
    # neighbour, from other noise, is another image.
    assert not differs(pair.images[1], alone)
    assert np.abs(array(pair.images[0]) - array(alone)).mean() > 5
    start = uri(picture(80, 64))
    img2img = generate(model, seed=1, image=start, width=None, height=None)
    assert img2img.inputs.mode == "img2img" and img2img.images[0].size == (80, 64)
    # strength: the part of the schedule that runs (the default 0.8 of 3 steps is 2, 0.4 is 1).
    steps = [len(given_to_the_transformer(model, seed=1, image=start, width=None, height=None, **strength).calls)
             for strength in ({}, {"strength": 0.4})]
    assert steps[0] > steps[1] > 0
    inpaint = generate(model, seed=1, image=start, mask_image=uri(Image.new("L", (80, 64), 255)))
    assert inpaint.inputs.mode == "inpaint" and inpaint.images[0].size == (64, 64)
    control = generate(model, seed=1, control_image=uri(picture(64, 64)))
    assert control.inputs.mode == "controlnet"
    # What the ControlNet gives the transformer's blocks at the first step: another control image, others.
    given = [torch.cat([block.flatten() for block in given_to_the_transformer(
        model, seed=1, control_image=uri(picture(64, 64, seed=seed))).first(CONTROLNET_INPUT[family])])
        for seed in (0, 3)]
    assert relative(*given) > 0.1
    assert not any(pair.nsfw + control.nsfw)  # neither family ships a safety checker


def test_defaults_come_from_the_model(loaded, models):
    sd3, schnell = loaded["sd3"].limits, loaded["flux"].limits
    assert (sd3.default_steps, sd3.default_guidance_scale, sd3.native_width) == (28, 7.0, 64)
    # The tiny FLUX has no guidance embedding, as FLUX.1-schnell: 4 steps, no guidance; FLUX's 128 latents native.
    assert (schnell.default_steps, schnell.default_guidance_scale, schnell.guidance) == (4, 0.0, False)
    assert schnell.native_width == 128 * 2 and parse({"prompt": "a"}, schnell).num_inference_steps == 4
    dev = families.defaults(families.named("flux"), "black-forest-labs/FLUX.1-dev", {"guidance_embeds": True})
    assert (dev.steps, dev.guidance_scale, dev.guidance) == (28, 3.5, True)
    turbo = families.defaults(families.named("sd3"), "stabilityai/stable-diffusion-3.5-large-turbo", {})
    assert (turbo.steps, turbo.guidance_scale, turbo.guidance) == (4, 0.0, False)
    operator = load(models, "sd3", default_steps=9, default_guidance_scale=2.5).limits
    assert (operator.default_steps, operator.default_guidance_scale) == (9, 2.5)
    # Whole latent patches: 16 px for the real SD 3 (VAE 8 x patch 2) and FLUX.1 (VAE 8 x 2x2 packing).
    assert size_multiple(families.named("sd3"), SimpleNamespace(vae_scale_factor=8, patch_size=2)) == 16
    assert size_multiple(families.named("flux"), SimpleNamespace(vae_scale_factor=8)) == 16
    assert size_multiple(families.named("sd"), SimpleNamespace(vae_scale_factor=8)) == 8


def test_what_a_family_does_not_take_is_refused_by_name(loaded, models):
    flux, sd3 = loaded["flux"], loaded["sd3"]
    assert "takes no negative prompt" in refusal(flux, negative_prompt="blur")["negative_prompt"]
    assert "takes no guidance" in refusal(flux, guidance_scale=3.5)["guidance_scale"]
    for model in (flux, sd3):
        message = refusal(model, scheduler="DPM++ 2M")["scheduler"]
        assert "flow-matching" in message and "flow_euler, flow_euler_karras" in message
    assert "not a flow-matching model" in refusal(load(models, "sd"), scheduler="flow_euler")["scheduler"]
    parse({"prompt": "a", "negative_prompt": ""}, flux.limits)  # an empty one is none (A1111 clients send it)
    # SD 3 takes one, and it acts: the unconditional half of the batch (the first) is its text, the prompt's is kept.
    negative, none = (given_to_the_transformer(sd3, seed=2, **given).first("encoder_hidden_states")
                      for given in ({"negative_prompt": "green"}, {}))
    assert relative(negative[:1], none[:1]) > 0.1 and torch.equal(negative[1:], none[1:])
    euler, karras = (generate(flux, seed=2, scheduler=name).images[0] for name in ("Euler", "flow_euler_karras"))
    assert np.array_equal(array(euler), array(generate(flux, seed=2).images[0]))  # Euler: the model's own
    euler_steps, karras_steps = (timesteps(given_to_the_transformer(flux, seed=2, scheduler=name))
                                 for name in ("Euler", "flow_euler_karras"))
    assert len(euler_steps) == len(karras_steps) and euler_steps != karras_steps  # Karras' sigmas


def test_drop_t5_loads_sd3_without_its_t5_and_flux_refuses_it(loaded, models):
    lean = load(models, "sd3", drop_t5=True)
    assert lean.pipe.text_encoder_3 is None and loaded["sd3"].pipe.text_encoder_3 is not None
    # SD 3 reads CLIP's 77 tokens, then T5's: without T5 those are zeros, as its pipeline documents.
    without, with_t5 = (given_to_the_transformer(model, seed=4).first("encoder_hidden_states")
                        for model in (lean, loaded["sd3"]))
    assert without.shape == with_t5.shape and not without[:, 77:].any() and with_t5[:, 77:].abs().max() > 0.1
    with pytest.raises(FamilyError, match="DROP_T5=1 applies to SD 3 models; this one is FLUX.1"):
        load(models, "flux", drop_t5=True)
    with pytest.raises(FamilyError, match="is a ControlNetModel: a FLUX.1 model takes a FluxControlNetModel"):
        load(models, "flux", controlnet_id=str(models["controlnet"]))


def test_cpu_offload_hooks_each_mode_and_changes_no_pixel(loaded, models):
    """On a GPU each model visits the card only while it runs; here the hooks move them to the CPU, where they are:
    what is checked is that every mode runs under the hooks and gives the image it gives without them."""
    offloaded = load(models, "sd3", cpu_offload=True, controlnet_id=str(models["sd3_controlnet"]))
    for inputs in ({}, {"control_image": uri(picture(64, 64))}, {}):
        ours = generate(offloaded, seed=6, **inputs)
        assert hasattr(offloaded.pipe.transformer, "_hf_hook") and offloaded.offloaded_mode == ours.inputs.mode
        assert np.array_equal(array(ours.images[0]), array(generate(loaded["sd3"], seed=6, **inputs).images[0]))


@pytest.mark.parametrize("family", FLOW)
def test_compile_and_warm_up_take_the_transformer(models, family):
    settings = precision.settings(model_id=str(models[family]), compile=True,
                                  controlnet_id=str(models[f"{family}_controlnet"]))
    model = StableDiffusion.load(settings, compile_backend="eager")
    assert model.warm_up()  # the native size, the model's default guidance (none for schnell)
    assert [c.name for c in model.compiled] == ["transformer", "vae_decode"]
    assert all(len(c.variants) == 1 and c.sealed for c in model.compiled)
    # Every mode holds the one transformer whose forward is the compiled one.
    assert {id(mode.transformer.forward) for mode in model.modes.values()} == {id(model.compiled[0])}


@pytest.fixture(scope="module")
def apps(start_app, models):
    return {family: start_app({"MODEL_ID": str(models[family]), "CONTROLNET_ID": str(models[f"{family}_controlnet"])})
            for family in FLOW}


@pytest.fixture(scope="module")
def gateways(start_gateway, apps):
    return {family: start_gateway([app.url], *KEYS) for family, app in apps.items()}


@pytest.mark.parametrize("family", FLOW)
def test_every_mode_through_the_gateway_and_test_py(gateways, tmp_path, family):
    result = run([sys.executable, "test.py", "--steps", "2", "--width", "64", "--height", "64", "--out",
                  str(tmp_path)], client_env(gateways[family]))
    assert result.returncode == 0, result.stderr
    assert Image.open(result.stdout.split()[0]).size == (64, 64)
    start, white = uri(picture(80, 64)), uri(Image.new("L", (80, 64), 255))
    for inputs, mode in (({"image": start, "strength": 0.6, "scheduler": "flow_euler_karras"}, "img2img"),
                         ({"image": start, "mask_image": white}, "inpaint"), ({"control_image": start}, "controlnet")):
        answer = gateways[family].start_job({"prompt": "a", "num_inference_steps": 2, **inputs}, start_only=False)
        output = answer["modelOutputs"][0]
        assert (answer["message"], output["mode"], output["family"]) == ("success", mode, family), answer["message"]
        assert (output["width"], output["height"]) == (80, 64)  # each mode takes its input image's size


def test_sd3s_clip_encoders_cut_a_long_prompt_and_the_log_keeps_the_fact_not_the_words(apps):
    """SD 3's CLIP encoders read 77 tokens (its T5 reads the rest); diffusers logs the words it cut."""
    words = " ".join(f"zebraword{i}" for i in range(120))
    assert apps["sd3"].post({"prompt": words, "num_inference_steps": 1, "width": 64, "height": 64}).status_code == 200
    assert "zebraword" not in apps["sd3"].logs() and "part of a prompt was truncated" in apps["sd3"].logs()


def test_the_apps_document_and_the_gateway_say_what_flux_takes(gateways, apps):
    answer = gateways["flux"].start_job({"prompt": "a", "negative_prompt": "blur"}, start_only=False)
    assert "negative_prompt: this model (FLUX.1) takes no negative prompt" in answer["message"], answer
    fields = httpx.get(apps["flux"].url + "/openapi.json").json()["paths"]["/"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]
    assert "negative_prompt" not in fields and "negative" not in fields and "clip_skip" not in fields
    assert fields["scheduler"]["anyOf"][0]["enum"] == ["euler", "flow_euler", "flow_euler_karras", "Euler"]
    assert (fields["num_inference_steps"]["default"], fields["guidance_scale"]["default"]) == (4, 0.0)
    assert fields["guidance_scale"]["maximum"] == 1
