"""Images in (decoded safely, bounded) and out (encoded once, as data URIs)."""

import base64
import io

from PIL import Image, ImageOps, UnidentifiedImageError

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# zlib level 1: about 3x faster than PNG's default 6 on a 512x512 image, for files about 1.5x larger.
_SAVE_OPTIONS = {"png": {"compress_level": 1}, "jpeg": {"quality": 90}, "webp": {"quality": 90}}


def encode(image: Image.Image, output_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=output_format.upper(), **_SAVE_OPTIONS[output_format])
    return buffer.getvalue()


def data_uri(data: bytes, output_format: str) -> str:
    return f"data:{MIME_TYPES[output_format]};base64,{base64.b64encode(data).decode('ascii')}"


def to_data_uri(image: Image.Image, output_format: str) -> str:
    return data_uri(encode(image, output_format), output_format)


ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


# What an input image string looks like, for the OpenAPI document's generic validators: plain base64 (padded, no
# whitespace: decode's validate=True), or a data URI of the formats accepted. No such file is under 24 bytes.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
DATA_URI_PATTERN = rf"^data:image/({'|'.join(MIME_TYPES)});base64,{BASE64_PATTERN[1:]}"
MIN_BASE64_CHARS = 32


def max_base64_chars(max_bytes: int) -> int:
    """The longest base64 payload decode reads for a file of at most max_bytes (a little slack for padding)."""
    return (max_bytes + 2) // 3 * 4 + 4


def decode(value: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """An input image from base64 or a data URI: PNG, JPEG or WebP, bounded in bytes and in pixels.

    The pixel bound is checked on the header's size, before any pixel is decoded, so a decompression bomb (a small
    file declaring a huge image) is refused without being expanded. Raises ValueError saying what is wrong.
    """
    payload = value
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        mime = header[5:].split(";")[0]
        if ";base64" not in header or mime not in MIME_TYPES.values():
            raise ValueError("must be a data:image/png|jpeg|webp;base64 URI or plain base64")
    if len(payload) > max_base64_chars(max_bytes):
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except ValueError:
        raise ValueError("not a base64-encoded PNG, JPEG or WebP image") from None
    return from_bytes(raw, max_pixels, "not a base64-encoded PNG, JPEG or WebP image")


def from_bytes(raw: bytes, max_pixels: int, unreadable: str = "not a PNG, JPEG or WebP image") -> Image.Image:
    """A PNG, JPEG or WebP file's bytes as an image, its declared size bounded before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own bound, far above ours, refused at open
        raise ValueError(f"declares more than {max_pixels} pixels") from None
    except (ValueError, UnidentifiedImageError):
        raise ValueError(unreadable) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(f"declares {width}x{height}, more than {max_pixels} pixels")
    try:
        image.load()
    except (OSError, Image.DecompressionBombError):
        raise ValueError("the image data is truncated or corrupt") from None
    return ImageOps.exif_transpose(image)


def fit(size: tuple[int, int], budget: int, max_side: int, multiple: int = 8) -> tuple[int, int]:
    """An input image's size made usable: scaled down (keeping its shape) to fit the pixel budget and the largest
    side, then each side rounded down to a multiple of `multiple` (the model's: 8, or 16 for SD 3 and FLUX.1),
    and at least 64."""
    width, height = size
    scale = min(1.0, (budget / (width * height)) ** 0.5, max_side / max(width, height))
    return tuple(max(64, int(side * scale) // multiple * multiple) for side in (width, height))
