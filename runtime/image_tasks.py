"""Turning a call's image, mask and strength into an image-to-image or inpainting task.

The random draws happen here, in diffusers' order, so that one seed gives diffusers' image:
image-to-image samples the image's latents, then draws the noise; inpainting samples the
image's latents (when it needs them), draws the noise (unless latents were given), then
samples the masked image's latents, which StableDiffusionInpaintPipeline does for 4-channel
UNets too although it only uses them for 9-channel ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import Manifest, ModelInfo
from sdtrt.engine.ranges import check_image_size
from sdtrt.errors import ArtifactError, InputError
from sdtrt.runtime.image_input import (
    ImageInput,
    default_size,
    image_size,
    load_input,
    nearest_resize,
    preprocess_image,
    preprocess_mask,
)
from sdtrt.runtime.noise import NoiseSource
from sdtrt.runtime.request import Request
from sdtrt.runtime.tasks import ImageToImage, Inpaint, Task, check_strength, encode_image, repeat_to

log = logging.getLogger(__name__)

# diffusers' defaults: StableDiffusionImg2ImgPipeline 0.8, StableDiffusionInpaintPipeline 1.0.
DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0}
INPAINT_UNET_CHANNELS = 9  # latents 4 + mask 1 + masked-image latents 4


@dataclass(frozen=True)
class ImageInputs:
    image: Image.Image | np.ndarray
    mask: Image.Image | np.ndarray | None

    @property
    def kind(self) -> str:
        return "img2img" if self.mask is None else "inpaint"


def load_inputs(
    image: ImageInput | None,
    mask_image: ImageInput | None,
    strength: float | None,
    unet: Engine,
) -> ImageInputs | None:
    """The call's images, or None for text to image. A mask or strength without an image is
    an error, and so is anything but inpainting on an inpainting UNet."""
    if unet_channels(unet) == INPAINT_UNET_CHANNELS and (image is None or mask_image is None):
        raise InputError(
            "this is an inpainting model: give it an image and a mask (--image and --mask; "
            "API: image= and mask_image=)"
        )
    if image is None:
        if mask_image is not None:
            raise InputError("a mask needs an image to inpaint: pass --image (API: image=) too")
        if strength is not None:
            raise InputError("strength applies to an input image: pass --image (API: image=)")
        return None
    loaded = load_input(image, "image")
    mask = None if mask_image is None else load_input(mask_image, "mask")
    if mask is not None and image_size(mask) != image_size(loaded):
        # diffusers resizes image and mask to the output size each on its own; so do we.
        log.warning(
            "the mask is %dx%d px and the image %dx%d px; both are resized to the output size",
            *image_size(mask)[::-1],
            *image_size(loaded)[::-1],
        )
    return ImageInputs(loaded, mask)


def output_size(
    inputs: ImageInputs | None, manifest: Manifest, height: int | None, width: int | None
) -> tuple[int | None, int | None]:
    """Image to image keeps the image's size (rounded down to the VAE factor) unless asked
    otherwise, as diffusers does; inpainting, like diffusers, defaults to the native size."""
    if inputs is None or inputs.kind == "inpaint":
        return height, width
    own_height, own_width = default_size(inputs.image, manifest.model.vae_scale_factor)
    asked = (own_height if height is None else height, own_width if width is None else width)
    if height is None and width is None:
        try:
            check_image_size(manifest.ranges, *asked)
        except InputError as error:
            pixels = image_size(inputs.image)
            raise InputError(f"the image is {pixels[1]}x{pixels[0]} px: {error}") from None
    return asked


def unet_channels(unet: Engine) -> int:
    return int(unet.io.input("sample").shape[1])


def make_image_task(
    inputs: ImageInputs,
    request: Request,
    manifest: Manifest,
    engines: dict[str, Engine],
    source: NoiseSource,
    strength: float | None,
    draw_latents: Callable[[], np.ndarray],
    latents_given: bool,
) -> Task:
    """The task for `inputs`; `draw_latents` returns the caller's latents or draws the noise."""
    encoder = engines.get("vae_encoder")
    if encoder is None:
        raise ArtifactError(
            "these engines have no VAE encoder, which images need; rebuild with `sdtrt build "
            "--components text_encoder,unet,vae_decoder,vae_encoder`"
        )
    strength = DEFAULT_STRENGTH[inputs.kind] if strength is None else strength
    check_strength(strength, request.steps)
    model = manifest.model
    pixels = preprocess_image(inputs.image, request.height, request.width)
    if inputs.mask is None:
        if latents_given:
            raise InputError(
                "latents= is for text to image and inpainting; image to image draws its noise "
                "from the seed, as diffusers' StableDiffusionImg2ImgPipeline does"
            )
        image_latents = repeat_to(encode_image(encoder, pixels, model, source), request.batch)
        return ImageToImage(image_latents, draw_latents(), strength, request.steps)
    return _inpaint(
        inputs.mask, pixels, request, model, encoder, engines["unet"], source, strength,
        draw_latents, latents_given,
    )  # fmt: skip


def _inpaint(
    mask_input: Image.Image | np.ndarray,
    pixels: np.ndarray,
    request: Request,
    model: ModelInfo,
    encoder: Engine,
    unet: Engine,
    source: NoiseSource,
    strength: float,
    draw_latents: Callable[[], np.ndarray],
    latents_given: bool,
) -> Task:
    channels = unet_channels(unet)
    if channels not in (model.latent_channels, INPAINT_UNET_CHANNELS):
        raise ArtifactError(
            f"the UNet takes {channels} input channels; inpainting needs {model.latent_channels} "
            f"(an ordinary model) or {INPAINT_UNET_CHANNELS} (an inpainting model)"
        )
    dedicated = channels == INPAINT_UNET_CHANNELS
    from_noise = latents_given or strength == 1.0
    image_latents = None
    if not dedicated or not from_noise:
        image_latents = repeat_to(encode_image(encoder, pixels, model, source), request.batch)
    noise = draw_latents()
    mask = preprocess_mask(mask_input, request.height, request.width)
    masked_pixels = (pixels * (mask < 0.5)).astype(np.float32)
    masked_latents = encode_image(encoder, masked_pixels, model, source)
    f = model.vae_scale_factor
    latent_mask = nearest_resize(mask, request.height // f, request.width // f)
    return Inpaint(
        noise=noise,
        mask=repeat_to(latent_mask, request.batch),
        strength=strength,
        steps=request.steps,
        image_latents=image_latents,
        masked_latents=repeat_to(masked_latents, request.batch) if dedicated else None,
        from_noise=from_noise,
    )
