import base64
import io

import pytest
from PIL import Image

from serverless_sd.images import to_data_uri


@pytest.mark.parametrize("output_format, mime", [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_data_uri_round_trip(output_format, mime):
    image = Image.new("RGB", (24, 16), (200, 30, 90))
    uri = to_data_uri(image, output_format)
    header, payload = uri.split(",", 1)
    assert header == f"data:{mime};base64"
    decoded = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    assert decoded.format == output_format.upper() and decoded.size == (24, 16)


def test_png_is_lossless():
    image = Image.effect_noise((32, 32), 64).convert("RGB")
    payload = to_data_uri(image, "png").split(",", 1)[1]
    assert Image.open(io.BytesIO(base64.b64decode(payload))).tobytes() == image.tobytes()
