"""Loaded by schemathesis (SCHEMATHESIS_HOOKS=testkit.schemathesis_hooks): data for the app document's "image"
format, small real images as data URIs, so that schema-valid inputs are images the app can decode."""

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def _images(draw) -> str:
    width, height = draw(st.integers(8, 32)), draw(st.integers(8, 32))
    image_format = draw(st.sampled_from(["png", "jpeg", "webp"]))
    colour = draw(st.tuples(*[st.integers(0, 255)] * 3))
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format=image_format.upper())
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode()}"


schemathesis.openapi.format("image", _images())
