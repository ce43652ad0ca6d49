"""Loaded by schemathesis (SCHEMATHESIS_HOOKS=testkit.schemathesis_hooks): data for the app document's own formats,
so that schema-valid inputs are what the app can read: "image", small real images as data URIs; "prompt", text
whose brackets pair (AUTOMATIC1111's and compel's weights among it)."""

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


_TEXT = st.text(st.characters(blacklist_characters="()[]\\", blacklist_categories=("Cs",)), min_size=1, max_size=12)
_WEIGHTED = st.one_of(
    _TEXT,
    st.builds("({}:{:.2f})".format, _TEXT, st.floats(0, 2)),
    st.builds("({})".format, _TEXT),
    st.builds("[{}]".format, _TEXT),
    st.builds("{}++".format, _TEXT),
)
schemathesis.openapi.format("prompt", st.lists(_WEIGHTED, min_size=1, max_size=3).map(" ".join))
