"""img2img, inpainting, ControlNet, schedulers and the safety checker: over HTTP what a caller sees (modes, sizes,
errors), and in this process what each input does to the model (testkit.spies: the picture the VAE encodes, the
residuals a ControlNet adds, the timesteps a scheduler or a strength gives), in the tests' one dtype."""

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import InputError, parse
from testkit import precision
from testkit.file_server import FileServer
from testkit.spies import Calls, relative

from test_app import decode, generate, pixels

FAST = {"prompt": "a lighthouse", "num_inference_steps": 4, "seed": 7}


def uri(image: Image.Image, fmt: str = "PNG", data_uri: bool = True) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    payload = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/{fmt.lower()};base64,{payload}" if data_uri else payload


def picture(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def mask(width: int = 96, height: int = 80, left: bool = True) -> Image.Image:
    """White (repaint) on the left or the right half."""
    array = np.zeros((height, width), dtype=np.uint8)
    if left:
        array[:, : width // 2] = 255
    else:
        array[:, width // 2:] = 255
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def model(models) -> StableDiffusion:
    """The tiny model and its ControlNet, loaded in this process, so that what reaches them can be watched."""
    return StableDiffusion.load(precision.settings(model_id=str(models["sd"]), controlnet_id=str(models["controlnet"])))


def run(model: StableDiffusion, **inputs) -> SimpleNamespace:
    """One generation, and what the UNet and the VAE's encoder and decoder were called with."""
    with Calls(model.pipe.unet) as unet, Calls(model.pipe.vae.encoder) as encoder, \
            Calls(model.pipe.vae.decoder) as decoder:
        generated = model.generate(parse({**FAST, **inputs}, model.limits))
    return SimpleNamespace(unet=unet, encoder=encoder, decoder=decoder, image=generated.images[0])


def timesteps(calls: Calls) -> list[float]:
    return [float(t) for t in calls.each("timestep")]


def residuals(calls: Calls, step: int = 0) -> torch.Tensor | None:
    """What the ControlNet added to the UNet's skip connections at one step, all in one vector (None: nothing)."""
    call = calls.calls[step]
    down, mid = call.get("down_block_additional_residuals"), call.get("mid_block_additional_residual")
    return None if down is None else torch.cat([r.flatten() for r in (*down, mid)])


def test_img2img_takes_the_input_images_size(sd_app):
    base = generate(sd_app, **FAST, image=uri(picture()))
    assert base["mode"] == "img2img" and decode(base["image_base64"]).size == (96, 80)
    assert decode(generate(sd_app, **FAST, image=uri(picture()), width=64, height=64)["image_base64"]).size == (64, 64)


def test_img2img_starts_from_the_input_image_and_runs_the_part_of_the_schedule_its_strength_says(model):
    first = run(model, image=uri(picture()))
    # The VAE encodes the picture itself (scaled to [-1, 1]), and another picture is another start.
    as_sent = torch.from_numpy(np.asarray(picture(), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert relative(first.encoder.first("sample")[0], as_sent) < 0.01
    other = run(model, image=uri(picture(seed=1)))
    assert relative(first.encoder.first("sample"), other.encoder.first("sample")) > 0.5
    # strength s runs the last s of the schedule: the same timesteps as strength 1 from a later start.
    schedule = {strength: timesteps(run(model, image=uri(picture()), strength=strength).unet)
                for strength in (1.0, 0.8, 0.5)}
    assert len(schedule[1.0]) > len(schedule[0.8]) > len(schedule[0.5]) > 0
    assert all(steps == schedule[1.0][-len(steps):] for steps in schedule.values())
    assert schedule[0.8] == timesteps(first.unet)  # 0.8: the default


@pytest.mark.parametrize("fmt, data_uri", [("JPEG", True), ("WEBP", True), ("PNG", False)])
def test_input_images_as_jpeg_webp_or_plain_base64(sd_app, fmt, data_uri):
    answer = generate(sd_app, **FAST, image=uri(picture(), fmt, data_uri))
    assert decode(answer["image_base64"]).size == (96, 80)


def test_sizes_are_rounded_down_to_multiples_of_8_and_fitted_to_the_budget(start_app, models):
    small_budget = start_app({"MODEL_ID": str(models["sd"]), "MAX_PIXELS": "8192"})
    assert decode(generate(small_budget, **FAST, image=uri(picture(100, 70)))["image_base64"]).size == (96, 64)
    # 200x100 is over 8192 pixels: scaled to 128x64 (8192) keeping its shape.
    assert decode(generate(small_budget, **FAST, image=uri(picture(200, 100)))["image_base64"]).size == (128, 64)


def test_inpainting_answers_the_input_images_size(sd_app):
    answer = generate(sd_app, **FAST, image=uri(picture()), mask_image=uri(mask(left=True)))
    assert answer["mode"] == "inpaint" and decode(answer["image_base64"]).size == (96, 80)


def test_inpainting_repaints_the_white_part_and_keeps_the_rest(model):
    """What the VAE decodes: where the mask is black, the input picture's own latents, exactly (those of a mask that
    keeps everything); where it is white, new ones."""
    def halves(mask_image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        latents = run(model, image=uri(picture()), mask_image=uri(mask_image)).decoder.first("sample")
        return latents[..., :latents.shape[-1] // 2], latents[..., latents.shape[-1] // 2:]

    kept = halves(Image.new("L", (96, 80), 0))
    for white, black in ((0, 1), (1, 0)):
        latents = halves(mask(left=white == 0))
        assert torch.equal(latents[black], kept[black])
        assert relative(latents[white], kept[white]) > 0.5


def test_controlnet_is_chosen_by_the_control_image(controlnet_app):
    base = generate(controlnet_app, **FAST, control_image=uri(picture(64, 64)))
    assert base["mode"] == "controlnet" and decode(base["image_base64"]).size == (64, 64)
    assert generate(controlnet_app, **FAST)["mode"] == "txt2img"  # the same weights serve plain text-to-image


def test_controlnet_follows_the_control_image_at_the_scale_asked(model):
    """The residuals the ControlNet adds to the UNet at the first step (the same latents and prompt in each run):
    another control image gives other residuals; controlnet_conditioning_scale scales them; without a control image
    the UNet gets none."""
    base = residuals(run(model, control_image=uri(picture(64, 64))).unet)
    assert relative(base, residuals(run(model, control_image=uri(picture(64, 64, seed=3))).unet)) > 0.1
    scaled = residuals(run(model, control_image=uri(picture(64, 64)), controlnet_conditioning_scale=0.2).unet)
    assert relative(scaled, 0.2 * base) < 0.01
    assert residuals(run(model).unet) is None


def test_the_modes_share_one_copy_of_the_weights(model):
    assert set(model.modes) == {"txt2img", "img2img", "inpaint", "controlnet"}
    for mode in model.modes.values():
        assert mode.unet is model.pipe.unet and mode.vae is model.pipe.vae
        assert mode.text_encoder is model.pipe.text_encoder


SCHEDULER_NAMES = ["euler", "euler_a", "ddim", "dpm++_2m", "dpm++_2m_karras", "unipc", "lms", "pndm", "lcm", "tcd",
                   "euler_trailing", "Euler a", "DPM++ 2M Karras", "dpm++ 2m", "PLMS", "EULER", "LCM"]


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_schedulers_by_name(sd_app, name):
    assert decode(generate(sd_app, **FAST, scheduler=name)["image_base64"]).size == (64, 64)


def test_a_scheduler_gives_its_own_timesteps_and_does_not_leak_into_the_next_request(model):
    default = run(model)
    euler_a = run(model, scheduler="euler_a")
    assert timesteps(euler_a.unet) != timesteps(default.unet)  # PNDM runs its first timestep twice; Euler's once
    after = run(model)
    assert timesteps(after.unet) == timesteps(default.unet) and after.image.tobytes() == default.image.tobytes()
    assert run(model, scheduler="pndm").image.tobytes() == default.image.tobytes()  # the model's own


def test_the_safety_checker_runs_by_default_and_blanks_each_flagged_image(start_app, models):
    checked = start_app({"MODEL_ID": str(models["sd_checked"])})
    answer = generate(checked, **FAST, num_images=2)
    assert answer["nsfw"] == [True, True] and len(answer["images"]) == 2
    assert all(pixels(image).max() == 0 for image in answer["images"])


def test_the_safety_checker_reads_the_images_the_answer_holds_converted_once(models, monkeypatch):
    """diffusers' pipelines turn their images into PIL images for their checker, then again for their answer."""
    checked = StableDiffusion.load(precision.settings(model_id=str(models["sd_checked"])))
    conversions, convert = [], VaeImageProcessor.postprocess
    monkeypatch.setattr(VaeImageProcessor, "postprocess",
                        lambda self, *args, **kwargs: conversions.append(kwargs["output_type"]) or convert(
                            self, *args, **kwargs))
    generated = checked.generate(parse({**FAST, "num_images": 2}, checked.limits))
    assert conversions == ["pil"] and generated.nsfw == [True, True]
    assert all(np.asarray(image).max() == 0 for image in generated.images)


def test_safety_checker_off(start_app, models):
    unchecked = start_app({"MODEL_ID": str(models["sd_checked"]), "SAFETY_CHECKER": "off"})
    answer = generate(unchecked, **FAST, num_images=2)
    assert answer["nsfw"] == [False, False] and all(pixels(image).max() > 0 for image in answer["images"])


def test_img2img_under_one_step_runs_one_at_the_strength_asked(sd_app, model):
    light = {**FAST, "image": uri(picture()), "strength": 0.1, "num_inference_steps": 5}  # 0.5 of a step
    once = generate(sd_app, **light)
    assert once["images"] == generate(sd_app, **light)["images"]  # the seed reproduces it
    # The schedule is lengthened until one step runs, from near the end of the noise levels (0.9: near the start).
    light_steps, heavy_steps = (timesteps(run(model, **{**light, "strength": s}).unet) for s in (0.1, 0.9))
    assert 0 < len(light_steps) < len(heavy_steps) and max(light_steps) <= 200 and max(heavy_steps) >= 500


def bomb() -> str:
    """A PNG of a few KB that declares 20000x20000 pixels."""
    return uri(Image.new("1", (20000, 20000)))


@pytest.mark.parametrize("inputs, field, why", [
    ({"mask_image": "MASK"}, "mask_image", "needs image"),
    ({"strength": 0.5}, "strength", "applies only with image"),
    ({"image": "IMAGE", "strength": 0}, "strength", "greater than or equal to 0.01"),
    ({"image": "IMAGE", "strength": 1.5}, "strength", "less than or equal to 1"),
    ({"control_image": "IMAGE"}, "control_image", "has no ControlNet"),
    ({"controlnet_conditioning_scale": 0.5}, "controlnet_conditioning_scale", "applies only with control_image"),
    ({"scheduler": "k_heun_turbo"}, "scheduler", "unknown scheduler"),
    ({"prompt": "a ((cat"}, "prompt", "'(' at character 4 is not closed"),
    ({"negative_prompt": "blur]"}, "negative_prompt", "']' at character 5 closes nothing"),
    ({"clip_skip": 3}, "clip_skip", "at most 2, the layers of this model's text encoder"),  # the tiny CLIP's 2
    ({"clip_skip": 0}, "clip_skip", "greater than or equal to 1"),
    ({"image": "not base64!"}, "image", "not a base64-encoded PNG, JPEG or WebP image"),
    ({"image": "data:image/gif;base64,R0lGODlhAQABAAAAACw="}, "image", "must be a data:image/png|jpeg|webp"),
    ({"image": base64.b64encode(b"GIF89a" + b"\0" * 20).decode()}, "image", "not a base64-encoded PNG"),
    ({"image": 12}, "image", "must be a base64 string"),
    ({"image": "BOMB"}, "image", "more than 16777216 pixels"),
    ({"image": "LARGE"}, "image", "declares 5000x4000, more than 16777216 pixels"),
    ({"image": "TRUNCATED"}, "image", "truncated or corrupt"),
])
def test_bad_mode_inputs_are_422_naming_the_field(sd_app, inputs, field, why):
    replacements = {"IMAGE": uri(picture()), "MASK": uri(mask()), "BOMB": bomb(),
                    "LARGE": uri(Image.new("1", (5000, 4000))),
                    "TRUNCATED": base64.b64encode(base64.b64decode(uri(picture(), data_uri=False))[:200]).decode()}
    inputs = {k: replacements.get(v, v) if isinstance(v, str) else v for k, v in inputs.items()}
    response = sd_app.post({"prompt": "a", "num_inference_steps": 2, **inputs})
    assert response.status_code == 422, response.text
    assert {"field": field, "message": next(e["message"] for e in response.json()["errors"] if e["field"] == field)} \
        in response.json()["errors"]
    assert why in response.json()["error"], response.json()["error"]


def test_sdxl_img2img(sdxl_app):
    answer = generate(sdxl_app, **FAST, image=uri(picture()))
    assert answer["mode"] == "img2img" and decode(answer["image_base64"]).size == (96, 80)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served-images")
    picture(96, 80).save(folder / "in.png")
    mask(96, 80).save(folder / "mask.png")
    picture(600, 600).save(folder / "large.png")  # about 1 MB: over the bound below
    (folder / "not-an-image.png").write_bytes(b"<html>a login page</html>")
    server = FileServer(folder)
    yield server
    server.close()


def test_input_images_by_url_from_allowed_hosts_only(models, image_server):
    """image, mask_image and control_image may be URLs, fetched with the bounds of base64 images, from the hosts
    IMAGE_HOSTS lists (fetching.py: no other host, no address inside the network unless listed as such)."""
    model = StableDiffusion.load(precision.settings(model_id=str(models["sd"]), image_hosts=image_server.url,
                                                    max_image_bytes=500_000))
    inputs = {"prompt": "a", "num_inference_steps": 2, "seed": 1}
    by_url = {**inputs, "image": f"{image_server.url}/in.png", "mask_image": f"{image_server.url}/mask.png"}
    by_value = {**inputs, "image": uri(picture(96, 80)), "mask_image": uri(mask(96, 80))}
    assert model.generate(parse(by_url, model.limits)).images[0].tobytes() == \
        model.generate(parse(by_value, model.limits)).images[0].tobytes()
    for url, message in ((f"{image_server.url}/missing.png", "answered HTTP 404"),
                         (f"{image_server.url}/not-an-image.png", "not a PNG, JPEG or WebP image"),
                         (f"{image_server.url}/large.png", "over the limit of 500000"),
                         ("https://example.com/in.png", "its host 'example.com' is not one this deployment fetches"),
                         ("file:///etc/passwd", "not a base64-encoded PNG, JPEG or WebP image")):
        with pytest.raises(InputError) as refused:
            parse({**inputs, "image": uri(picture(96, 80)), "mask_image": url}, model.limits)
        assert refused.value.errors[0][0] == "mask_image" and message in refused.value.errors[0][1], refused.value
