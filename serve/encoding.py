"""Images to PNG bytes that carry their settings, as `sdtrt run` writes them to disk."""

from __future__ import annotations

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdtrt.runtime.images import parameters_text
from sdtrt.runtime.request import Request


def infotext(request: Request, model: str, index: int, seed: int) -> str:
    """The `parameters` text for image `index` of a pipeline call: same keys as `sdtrt run`."""
    settings: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.scheduler,
        "CFG scale": request.guidance_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model": model,
    }
    if request.noise != "torch":
        settings["Noise"] = request.noise
    if request.batch > 1:
        settings["Batch pos"] = index
    return parameters_text(request.prompts[0], request.negative_prompts[0], settings)


def png_bytes(image: Image.Image, parameters: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    # compress_level 1: the tiny-to-1024px images of a server encode in milliseconds, not tens.
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()
