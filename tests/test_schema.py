"""modelInputs validation as a function: defaults, limits from settings and the model, seeds; and the copies of
the contract that cannot import it (test.py, the docs' table) checked against it."""

import importlib.util
import re
import typing

import pytest

from serverless_sd.schema import SEED_LIMIT, GenerateInputs, InputError, Limits, OutputFormat, parse
from serverless_sd.settings import Settings
from testkit.processes import ROOT

LIMITS = Limits.from_settings(Settings(max_pixels=768 * 768, max_steps=50, max_prompt_chars=100),
                              native_width=512, native_height=512)


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
    few = Limits.from_settings(Settings(max_pixels=512 * 512, max_steps=4, max_prompt_chars=9),
                               native_width=512, native_height=512)
    assert parse({"prompt": "a"}, few).num_inference_steps == 4
    assert "at most 4" in errors({"prompt": "a", "num_inference_steps": 25}, few)["num_inference_steps"]


def test_the_pixel_budget_always_admits_the_models_native_size():
    sdxl = Limits.from_settings(Settings(max_pixels=512 * 512, max_steps=50, max_prompt_chars=9),
                                native_width=1024, native_height=1024)
    assert parse({"prompt": "a"}, sdxl).size(sdxl) == (1024, 1024)
    assert "over the budget of 1048576" in errors({"prompt": "a", "width": 1032}, sdxl)["width, height"]


def test_one_side_given_takes_the_other_from_the_model():
    assert parse({"prompt": "a", "width": 768}, LIMITS).size(LIMITS) == (768, 512)


def test_integral_numbers_are_integers_as_json_schema_says_and_ints_are_guidance():
    inputs = parse({"prompt": "a", "width": 512.0, "seed": 173.0, "num_images": 2.0}, LIMITS)
    assert (inputs.width, inputs.seed, inputs.num_images) == (512, 173, 2) and type(inputs.width) is int
    assert "valid integer" in errors({"prompt": "a", "width": 512.5})["width"]
    assert "valid integer" in errors({"prompt": "a", "num_inference_steps": True})["num_inference_steps"]
    assert parse({"prompt": "a", "guidance_scale": 5}, LIMITS).guidance_scale == 5.0


def test_seeds_per_image():
    assert parse({"prompt": "a", "seed": 7, "num_images": 3}, LIMITS).seeds() == [7, 8, 9]
    drawn = parse({"prompt": "a", "num_images": 4}, LIMITS).seeds()
    assert len(set(drawn)) == 4 and all(0 <= s < SEED_LIMIT for s in drawn)


def test_messages_name_the_alias_the_caller_used():
    assert "num_images_per_prompt" in errors({"prompt": "a", "num_images_per_prompt": 9})


def test_a_field_and_its_alias_together_are_refused_as_such():
    assert errors({"prompt": "a", "negative": "b", "negative_prompt": "c"}) == {
        "negative": "the same field as negative_prompt: send one of the two"}


IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5E"
         "rkJggg==")  # 1x1


@pytest.mark.parametrize(("steps", "strength", "schedule"), [(25, 0.8, 25), (5, 0.1, 10), (1, 0.3, 4), (1, 0.01, 100),
                                                             (2, 0.5, 2), (3, 1.0, 3)])
def test_img2img_under_one_step_lengthens_the_schedule_until_one_runs(steps, strength, schedule):
    inputs = parse({"prompt": "a", "image": IMAGE, "num_inference_steps": steps, "strength": strength}, LIMITS)
    assert inputs.schedule_steps() == schedule and int(schedule * strength) >= 1
    assert int((schedule - 1) * strength) < 1 or schedule == steps  # no longer than it must be
    assert parse({"prompt": "a", "num_inference_steps": steps}, LIMITS).schedule_steps() == steps  # txt2img: as is


def test_strength_has_a_floor_a_schedule_can_reach():
    assert "greater than or equal to 0.01" in errors({"prompt": "a", "image": IMAGE, "strength": 0.001})["strength"]


def _test_py():
    """test.py as a module (its name would import the standard library's test package)."""
    spec = importlib.util.spec_from_file_location("test_py_client", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_py_has_an_option_for_every_input_and_no_other():
    client = _test_py()
    actions = [a for a in client.options()._actions if a.dest != "help"]
    inputs = {a.dest for a in actions} - set(client.NOT_INPUTS)
    assert inputs == set(GenerateInputs.model_fields)
    formats = next(a for a in actions if a.dest == "output_format").choices
    assert list(formats) == list(typing.get_args(OutputFormat))


def test_the_docs_input_table_lists_every_input_and_no_other():
    table = (ROOT / "docs" / "api.md").read_text().split("| input |", 1)[1].split("\n\n", 1)[0]
    documented = set()
    for row in table.splitlines()[2:]:
        documented |= set(re.findall(r"`([a-z_]+)`", row.split("|")[1]))
    aliases = {"negative", "num_images_per_prompt"}  # documented beside their field, as the schema accepts them
    assert documented - aliases == set(GenerateInputs.model_fields)
