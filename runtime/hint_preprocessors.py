"""ControlNet hints made from a photo, as the A1111 web UI's ControlNet extension makes them (its
`module`s): `canny`, the edges OpenCV's Canny detector finds, white on black.

Like the extension, the photo is first resized so that its short side is `resolution` pixels
(its "processor resolution", 512 by default), bicubic when enlarging and by area when
shrinking; the hint is then resized to the output size as any hint is. OpenCV comes with the
`preprocess` extra (the `serve` extra includes it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdtrt.errors import InputError

CANNY_THRESHOLDS = (100, 200)  # the extension's defaults: threshold_a (low), threshold_b (high)
RESOLUTION = 512
PREPROCESSORS = ("canny",)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as error:
        raise InputError(
            "the canny preprocessor needs OpenCV: pip install 'sdtrt[preprocess]'"
        ) from error
    return cv2


def canny(
    image: Image.Image,
    low_threshold: float = CANNY_THRESHOLDS[0],
    high_threshold: float = CANNY_THRESHOLDS[1],
    resolution: int = RESOLUTION,
) -> Image.Image:
    """The Canny edges of `image` (RGB, 0 or 255), at `resolution` on its short side."""
    if not 0 <= low_threshold <= high_threshold <= 255 * 4:
        raise InputError(
            "canny's thresholds run 0 <= low <= high <= 1020 (the extension's: 100 and 200); "
            f"got {low_threshold:g} and {high_threshold:g}"
        )
    if not 64 <= resolution <= 4096:
        raise InputError(f"the processor resolution runs from 64 to 4096, got {resolution}")
    cv2 = _cv2()
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    factor = resolution / min(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    interpolation = cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA
    resized = cv2.resize(pixels, size, interpolation=interpolation)
    edges = cv2.Canny(resized, float(low_threshold), float(high_threshold))
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def run_preprocessor(
    module: str,
    image: Image.Image,
    thresholds: tuple[float | None, float | None] = (None, None),
    resolution: int = RESOLUTION,
) -> Image.Image:
    """`image` through the preprocessor named `module` ("none": as it is); a threshold left
    None takes the preprocessor's default."""
    if module in ("none", ""):
        return image
    if module != "canny":
        raise InputError(
            f"unknown hint preprocessor {module!r}; choose none or {', '.join(PREPROCESSORS)} "
            "(or send the processed hint)"
        )
    low, high = (d if t is None else t for t, d in zip(thresholds, CANNY_THRESHOLDS, strict=True))
    return canny(image, low, high, resolution)
