"""Images to PNG bytes that carry their settings, as `sdtrt run` writes them to disk; and the
images clients send, from base64."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdtrt.errors import InputError
from sdtrt.runtime.postprocess import generation_settings, parameters_text
from sdtrt.runtime.preprocess import decode_image
from sdtrt.runtime.request import Controls, Request


def infotext(request: Request, model: str, index: int, controls: Controls | None = None) -> str:
    """The `parameters` text for image `index` of a pipeline call, as `sdtrt run` writes it."""
    settings = generation_settings(request, model, index, controls=controls)
    return parameters_text(request.prompts[0], request.negative_prompts[0], settings)


def png_bytes(image: Image.Image, parameters: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    # compress_level 1: the tiny-to-1024px images of a server encode in milliseconds, not tens.
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def image_from_base64(text: str, what: str) -> Image.Image:
    """A client's base64 image (a bare string or a `data:image/...;base64,` URL), decoded
    within the pixel bound every input image has; one line for anything else."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise InputError(f"{what} is not base64 ({error})") from error
    return decode_image(data, what)
