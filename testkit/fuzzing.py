"""What the fuzz tests share: JSON of every shape, plausible modelInputs, and the rules every answer keeps.

FUZZ_EXAMPLES sets the cases per test (500 in `make test`; `make fuzz` runs 10,000 on a fresh random seed).
"""

import json
import math
import os

from hypothesis import strategies as st

from serverless_sd import schedulers

from test_modes import mask, picture, uri

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))

numbers = st.integers() | st.floats() | st.sampled_from([0, -1, 2**63, 2**64, 2**200, math.nan, math.inf, -0.0])
texts = st.text(max_size=60) | st.sampled_from(["", " ", "\x00", "é" * 10, "<script>", "{{}}", "%s%n"])
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
# A few real images (small, large-declared, odd formats) and strings that only look like them.
IMAGES = [uri(picture(64, 64)), uri(picture(72, 64), "JPEG"), uri(picture(64, 64), "WEBP", data_uri=False),
          uri(mask(64, 64)), uri(picture(200, 200)), "data:image/png;base64,", "data:image/gif;base64,R0lGOD",
          "aGVsbG8=", "data:,hello", "data:image/png;base64," + "A" * 5000,
          "https://example.com/a.png", "http://127.0.0.1:9/a.png", "https://169.254.169.254/latest/meta-data"]


def inputs_for(fields: dict) -> st.SearchStrategy[dict]:
    """Dicts holding any subset of the known fields (each a plausible or an arbitrary value), plus unknown keys."""
    known = st.fixed_dictionaries({}, optional={name: value | json_values for name, value in fields.items()})
    extra = st.dictionaries(texts, json_values, max_size=2)
    return st.builds(lambda extra, known: {**extra, **known}, extra, known)


PLAUSIBLE = {
    "prompt": texts, "negative_prompt": texts, "negative": texts,
    "width": st.integers(-8, 300), "height": st.integers(-8, 300),
    "num_inference_steps": st.integers(-1, 3), "guidance_scale": numbers,
    "seed": st.integers(-2, 2**65), "num_images": st.integers(-1, 3), "num_images_per_prompt": st.integers(-1, 3),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif", "PNG"]),
    "scheduler": st.sampled_from([*schedulers.SCHEDULERS, *schedulers.A1111_NAMES, "DPM++ 2M Karras", "nope"]),
    "image": st.sampled_from(IMAGES), "mask_image": st.sampled_from(IMAGES), "control_image": st.sampled_from(IMAGES),
    "strength": numbers, "controlnet_conditioning_scale": numbers,
    "loras": st.lists(st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["style", "ink", "nope", "owner/repo", ""]) | texts,
        "url": st.sampled_from(["https://huggingface.co/a/b/resolve/main/c.safetensors", "http://127.0.0.1/x"]),
        "scale": numbers}), max_size=3),
}
# Inputs a careful caller sends (within the tests' tight limits), so that some cases run a generation.
VALID = {
    "negative_prompt": st.text(max_size=20), "width": st.sampled_from([64, 72, 128]),
    "height": st.sampled_from([64, 96, 128]), "num_inference_steps": st.integers(1, 2),
    "guidance_scale": st.floats(0, 30), "seed": st.integers(0, 2**64 - 1), "num_images": st.integers(1, 2),
    "output_format": st.sampled_from(["png", "jpeg", "webp"]),
    "scheduler": st.sampled_from([*schedulers.SCHEDULERS, "Euler a", "DPM++ 2M Karras"]),
    "loras": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["style", "ink"])},
                                            optional={"scale": st.floats(-4, 4)}), max_size=2),
}


def _with(inputs: dict, change: tuple[str, object] | None) -> dict:
    return inputs if change is None else {**inputs, change[0]: change[1]}


# Careful inputs, some with one field made wrong; or any subset of the fields, each plausible or arbitrary.
careful = st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=40)}, optional=VALID)
MODEL_INPUTS = st.one_of(
    st.builds(_with, careful, st.none() | st.tuples(st.sampled_from(sorted(PLAUSIBLE)), json_values)),
    inputs_for(PLAUSIBLE),
)


def bodies(objects: st.SearchStrategy[dict]) -> st.SearchStrategy[bytes]:
    """Mostly JSON objects; also any other JSON, and bytes that are not JSON at all."""
    return st.one_of(
        objects.map(lambda value: json.dumps(value).encode()),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=64),
        st.just(b"[" * 100_000),
    )


def assert_clean(response) -> dict:
    """No server error, JSON on every path, no traceback or internal path in any answer."""
    assert response.status_code < 500, response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "Traceback" not in response.text and 'File "' not in response.text and "site-packages" not in response.text
    return response.json()
