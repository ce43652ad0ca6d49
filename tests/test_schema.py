"""modelInputs validation as a function: defaults, limits from settings and the model, seeds."""

import pytest

from serverless_sd.schema import SEED_LIMIT, InputError, Limits, parse

LIMITS = Limits(native_width=512, native_height=512, max_pixels=768 * 768, max_side=2048, max_steps=50,
                max_images=4, max_prompt_chars=100)


def errors(body, limits=LIMITS) -> dict[str, str]:
    with pytest.raises(InputError) as caught:
        parse(body, limits)
    return dict(caught.value.errors)


def test_defaults():
    inputs = parse({"prompt": "a"}, LIMITS)
    assert inputs.size(LIMITS) == (512, 512)
    assert (inputs.num_inference_steps, inputs.guidance_scale, inputs.num_images) == (25, 7.0, 1)
    assert (inputs.negative_prompt, inputs.seed, inputs.output_format) == (None, None, "png")


def test_limits_come_from_settings():
    assert "at most 50" in errors({"prompt": "a", "num_inference_steps": 51})["num_inference_steps"]
    assert "at most 100 characters" in errors({"prompt": "a" * 101})["prompt"]
    assert "at most 100 characters" in errors({"prompt": "a", "negative": "a" * 101})["negative"]


def test_the_default_step_count_stays_within_max_steps():
    few = Limits(512, 512, max_pixels=512 * 512, max_side=2048, max_steps=4, max_images=4, max_prompt_chars=9)
    assert parse({"prompt": "a"}, few).num_inference_steps == 4
    assert "at most 4" in errors({"prompt": "a", "num_inference_steps": 25}, few)["num_inference_steps"]


def test_the_pixel_budget_always_admits_the_models_native_size():
    sdxl = Limits(1024, 1024, max_pixels=512 * 512, max_side=2048, max_steps=50, max_images=4, max_prompt_chars=9)
    assert parse({"prompt": "a"}, sdxl).size(sdxl) == (1024, 1024)
    assert "over the budget of 1048576" in errors({"prompt": "a", "width": 1032}, sdxl)["width, height"]


def test_one_side_given_takes_the_other_from_the_model():
    assert parse({"prompt": "a", "width": 768}, LIMITS).size(LIMITS) == (768, 512)


def test_integral_floats_are_not_sizes_but_ints_are_guidance():
    assert "valid integer" in errors({"prompt": "a", "width": 512.0})["width"]
    assert parse({"prompt": "a", "guidance_scale": 5}, LIMITS).guidance_scale == 5.0


def test_seeds_per_image():
    assert parse({"prompt": "a", "seed": 7, "num_images": 3}, LIMITS).seeds() == [7, 8, 9]
    drawn = parse({"prompt": "a", "num_images": 4}, LIMITS).seeds()
    assert len(set(drawn)) == 4 and all(0 <= s < SEED_LIMIT for s in drawn)


def test_messages_name_the_alias_the_caller_used():
    assert "num_images_per_prompt" in errors({"prompt": "a", "num_images_per_prompt": 9})
