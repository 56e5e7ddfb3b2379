"""Images to PNG bytes that carry their settings, as `sdtrt run` writes them to disk."""

from __future__ import annotations

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdtrt.runtime.postprocess import generation_settings, parameters_text
from sdtrt.runtime.request import Request


def infotext(request: Request, model: str, index: int) -> str:
    """The `parameters` text for image `index` of a pipeline call, as `sdtrt run` writes it."""
    settings = generation_settings(request, model, index)
    return parameters_text(request.prompts[0], request.negative_prompts[0], settings)


def png_bytes(image: Image.Image, parameters: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    # compress_level 1: the tiny-to-1024px images of a server encode in milliseconds, not tens.
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()
