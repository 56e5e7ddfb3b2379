"""Input images and masks for image-to-image and inpainting, prepared as diffusers prepares them.

diffusers' `VaeImageProcessor` resizes a PIL image with Lanczos (to the size asked for, or its
own size rounded down to a multiple of the VAE factor), converts it to RGB, and maps [0, 255] to
[-1, 1]; the mask processor does the same in greyscale, keeps [0, 1] and binarises at 0.5. Float
arrays in [0, 1] are resized by nearest neighbour, as torch's `interpolate` does for them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sdtrt.errors import InputError

ImageInput: TypeAlias = Image.Image | np.ndarray | str | Path
# 8192 x 8192: beyond any size the engines make, and 256 MiB decoded as RGBA. A small file can
# declare a huge image (a decompression bomb): its size is checked before it is decoded.
MAX_PIXELS = 8192 * 8192


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Read an image file fully, or fail with one line naming it."""
    try:
        return _decoded(path, f"{what} file {path}")
    except FileNotFoundError as error:
        raise InputError(f"{what} file {path} does not exist") from error


def decode_image(data: bytes, what: str = "image") -> Image.Image:
    """An image from the bytes of its file (PNG, JPEG, WebP...), or one line saying why not."""
    return _decoded(io.BytesIO(data), what)


def _decoded(source: str | Path | io.BytesIO, named: str) -> Image.Image:
    try:
        with Image.open(source) as handle:
            width, height = handle.size
            if width * height > MAX_PIXELS:
                raise InputError(
                    f"{named} is {width}x{height} pixels; the most it may have is "
                    f"{MAX_PIXELS} (8192x8192)"
                )
            handle.load()
            return handle.copy()
    except Image.DecompressionBombError as error:
        raise InputError(f"{named} declares more pixels than it may have") from error
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not an image"
        raise InputError(f"{named} cannot be read as an image ({reason})") from error


def _as_pil_or_array(value: ImageInput, what: str) -> Image.Image | np.ndarray:
    if isinstance(value, (str, Path)):
        return open_image(value, what)
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        array = value[0] if value.ndim == 4 and value.shape[0] == 1 else value
        if array.dtype == np.uint8:
            return Image.fromarray(
                array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"{what} array must be uint8 or float in [0, 1], got {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise InputError(f"{what} array holds NaN or infinity")
        return array.astype(np.float32)
    raise InputError(
        f"{what} must be a PIL image, a numpy array or a file path, got {type(value).__name__}"
    )


def image_size(value: Image.Image | np.ndarray) -> tuple[int, int]:
    """(height, width) of a PIL image or an (H, W[, C]) array."""
    if isinstance(value, Image.Image):
        return value.height, value.width
    return int(value.shape[0]), int(value.shape[1])


def default_size(value: Image.Image | np.ndarray, factor: int) -> tuple[int, int]:
    """The image's own size rounded down to a multiple of the VAE factor."""
    height, width = image_size(value)
    return height - height % factor, width - width % factor


def nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., H, W) to (..., height, width) by torch's nearest rule: source index
    floor(i * in / out), the scale rounded to float32."""
    rows = _nearest_indices(array.shape[-2], height)
    columns = _nearest_indices(array.shape[-1], width)
    return array[..., rows[:, None], columns[None, :]]


def _nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    scale = np.float32(size_in / size_out)
    index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)


def _channels_first(array: np.ndarray, channels: int, what: str) -> np.ndarray:
    """(H, W[, C]) float array to (1, channels, H, W)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"{what} array must have shape (H, W), (H, W, 1) or (H, W, 3), got {array.shape}"
        )
    if channels == 3:
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        array = array[..., :3]
    else:
        array = array[..., :1] if array.shape[-1] == 1 else array[..., :3].mean(-1, keepdims=True)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None]).astype(np.float32)


def _unit_pixels(value: Image.Image | np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """(1, 3, height, width) float32: a PIL image resized with Lanczos, in RGB, in [0, 1]; an
    array resized by nearest neighbour, its values as they are."""
    if isinstance(value, Image.Image):
        resized = value.resize((width, height), resample=Image.Resampling.LANCZOS)
        pixels = np.array(resized.convert("RGB")).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    array = nearest_resize(_channels_first(value, 3, what), height, width)
    return np.ascontiguousarray(array, dtype=np.float32)


def preprocess_image(value: Image.Image | np.ndarray, height: int, width: int) -> np.ndarray:
    """An image as the VAE encoder takes it: (1, 3, height, width) float32 in [-1, 1]."""
    array = _unit_pixels(value, height, width, "image")
    if not isinstance(value, Image.Image) and array.min() < 0:
        return array  # diffusers takes arrays with negatives as already in [-1, 1]
    return np.ascontiguousarray(np.float32(2.0) * array - np.float32(1.0), dtype=np.float32)


def preprocess_hint(value: Image.Image | np.ndarray, height: int, width: int) -> np.ndarray:
    """A ControlNet's hint image as it takes it: (1, 3, height, width) float32 in [0, 1], as
    diffusers' control image processor makes it (resized as above, not normalised)."""
    return _unit_pixels(value, height, width, "control image")


def preprocess_mask(value: Image.Image | np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask as (1, 1, height, width) float32 of 0 (keep) and 1 (repaint)."""
    if isinstance(value, Image.Image):
        resized = value.resize((width, height), resample=Image.Resampling.LANCZOS)
        pixels = np.array(resized.convert("L")).astype(np.float32) / np.float32(255.0)
        array = pixels[None, None]
    else:
        array = nearest_resize(_channels_first(value, 1, "mask"), height, width)
    return np.where(array < 0.5, np.float32(0.0), np.float32(1.0)).astype(np.float32)


def load_input(value: ImageInput, what: str) -> Image.Image | np.ndarray:
    """A PIL image or float array from whatever the caller passed."""
    return _as_pil_or_array(value, what)


Region = tuple[int, int, int, int]  # left, top, right, bottom, in pixels


def mask_crop_region(mask: Image.Image, width: int, height: int, padding: int) -> Region:
    """diffusers' `padding_mask_crop` region: the smallest box holding every non-black pixel of
    `mask`, grown by `padding` on each side (within the image), then grown along one axis to
    the output's aspect ratio, shifted back inside the image where it would leave it."""
    pixels = np.asarray(mask.convert("L"))
    rows, columns = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    if rows.size == 0:
        raise InputError("the mask is black everywhere: nothing to inpaint, so nothing to crop to")
    limit_y, limit_x = pixels.shape
    x1, x2 = max(int(columns[0]) - padding, 0), min(int(columns[-1]) + 1 + padding, limit_x)
    y1, y2 = max(int(rows[0]) - padding, 0), min(int(rows[-1]) + 1 + padding, limit_y)
    aspect = width / height
    if (x2 - x1) / (y2 - y1) > aspect:
        y1, y2 = _widen(y1, y2, int((x2 - x1) / aspect - (y2 - y1)), limit_y)
    else:
        x1, x2 = _widen(x1, x2, int((y2 - y1) * aspect - (x2 - x1)), limit_x)
    return x1, y1, x2, y2


def _widen(low: int, high: int, extra: int, limit: int) -> tuple[int, int]:
    """[low, high) grown by `extra`, half on each side, moved back within [0, limit)."""
    low, high = low - extra // 2, high + extra - extra // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


def fill_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` scaled to fit inside width x height, centred, the bands left over filled by
    stretching its first and last rows (or columns): diffusers' "fill" resize mode."""
    aspect, own = width / height, image.width / image.height
    if aspect < own:
        size = (width, image.height * width // image.width)
    else:
        size = (image.width * height // image.height, height)
    fitted = image.resize(size, resample=Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(fitted, (width // 2 - size[0] // 2, height // 2 - size[1] // 2))
    if aspect < own and (band := height // 2 - size[1] // 2) > 0:
        canvas.paste(fitted.resize((width, band), box=(0, 0, width, 0)), (0, 0))
        edge = (0, fitted.height, width, fitted.height)
        canvas.paste(fitted.resize((width, band), box=edge), (0, band + size[1]))
    elif aspect > own and (band := width // 2 - size[0] // 2) > 0:
        canvas.paste(fitted.resize((band, height), box=(0, 0, 0, height)), (0, 0))
        edge = (fitted.width, 0, fitted.width, height)
        canvas.paste(fitted.resize((band, height), box=edge), (band + size[0], 0))
    return canvas


def _cover_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` scaled to cover width x height, centred, the overhang cut: diffusers' "crop"."""
    aspect, own = width / height, image.width / image.height
    if aspect > own:
        size = (width, image.height * width // image.width)
    else:
        size = (image.width * height // image.height, height)
    canvas = Image.new("RGB", (width, height))
    fitted = image.resize(size, resample=Image.Resampling.LANCZOS)
    canvas.paste(fitted, (width // 2 - size[0] // 2, height // 2 - size[1] // 2))
    return canvas


def paste_back(
    generated: Image.Image, original: Image.Image, mask: Image.Image, region: Region
) -> Image.Image:
    """The generated crop scaled into `region` of the original image, and the original's
    unmasked pixels over it: diffusers' `apply_overlay`."""
    kept = Image.new("RGBa", original.size)
    kept.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    x1, y1, x2, y2 = region
    result = Image.new("RGBA", original.size)
    result.paste(_cover_resize(generated, x2 - x1, y2 - y1), (x1, y1))
    result = result.convert("RGB").convert("RGBA")
    result.alpha_composite(kept.convert("RGBA"))
    return result.convert("RGB")
