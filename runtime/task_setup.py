"""Turning a call's image, mask and strength into an image-to-image or inpainting task.

The random draws happen here, in diffusers' order, so that one seed gives diffusers' image:
image-to-image samples the image's latents, then draws the noise; inpainting samples the
image's latents (when it needs them), draws the noise (unless latents were given), then
samples the masked image's latents, which StableDiffusionInpaintPipeline does for 4-channel
UNets too although it only uses them for 9-channel ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import Manifest, ModelInfo
from sdtrt.engine.ranges import check_image_size
from sdtrt.engine.tensors import ComponentIO
from sdtrt.errors import ArtifactError, InputError
from sdtrt.runtime.families import family_of
from sdtrt.runtime.noise import NoiseSource
from sdtrt.runtime.numerics import is_finite
from sdtrt.runtime.preprocess import (
    ImageInput,
    default_size,
    fill_resize,
    image_size,
    load_input,
    mask_crop_region,
    nearest_resize,
    paste_back,
    preprocess_image,
    preprocess_mask,
)
from sdtrt.runtime.request import Request
from sdtrt.runtime.tasks import ImageToImage, Inpaint, Task, check_strength, repeat_to
from sdtrt.runtime.vae import ENCODERS, encode_image

log = logging.getLogger(__name__)

INPAINT_CHANNELS = 9  # latents 4 + mask 1 + masked-image latents 4


@dataclass(frozen=True)
class ImageInputs:
    image: Image.Image | np.ndarray
    mask: Image.Image | np.ndarray | None
    # Latents given as the image, (batch, latent channels, h, w): a base model's output handed
    # to an SDXL refiner, used as they are instead of VAE-encoded.
    latents: np.ndarray | None = None
    # Inpainting only the masked region's surroundings (diffusers' padding_mask_crop): pixels
    # of margin around the mask, the crop then pasted back into the image.
    padding_mask_crop: int | None = None

    @property
    def kind(self) -> str:
        return "img2img" if self.mask is None else "inpaint"


def load_inputs(
    image: ImageInput | None,
    mask_image: ImageInput | None,
    strength: float | None,
    *,
    denoiser: ComponentIO,
    model: ModelInfo,
    padding_mask_crop: int | None = None,
) -> ImageInputs | None:
    """The call's images, or None for text to image. A mask or strength without an image is
    an error, and so is anything but inpainting on an inpainting model (`denoiser`: its
    network's inputs, as an engine or the manifest records them)."""
    if denoiser_channels(denoiser) == INPAINT_CHANNELS and (image is None or mask_image is None):
        raise InputError(
            "this is an inpainting model: give it an image and a mask (--image and --mask; "
            "API: image= and mask_image=)"
        )
    if padding_mask_crop is not None and (
        isinstance(padding_mask_crop, bool)
        or not isinstance(padding_mask_crop, int)
        or padding_mask_crop < 0
        or mask_image is None
    ):
        raise InputError(
            "padding_mask_crop is a margin in pixels (a whole number of at least 0) around the "
            f"mask, for inpainting with an image and a mask; got {padding_mask_crop!r}"
        )
    if image is None:
        if mask_image is not None:
            raise InputError("a mask needs an image to inpaint: pass --image (API: image=) too")
        if strength is not None:
            raise InputError("strength applies to an input image: pass --image (API: image=)")
        return None
    if _are_latents(image, model):
        assert isinstance(image, np.ndarray)
        if mask_image is not None:
            raise InputError("inpainting takes an image, not latents; decode them first")
        if not is_finite(image):
            raise InputError("the image latents hold NaN or infinity")
        return ImageInputs(image, None, image.astype(np.float32))
    loaded = load_input(image, "image")
    mask = None if mask_image is None else load_input(mask_image, "mask")
    if mask is not None and image_size(mask) != image_size(loaded):
        # diffusers resizes image and mask to the output size each on its own; so do we.
        log.warning(
            "the mask is %dx%d px and the image %dx%d px; both are resized to the output size",
            *image_size(mask)[::-1],
            *image_size(loaded)[::-1],
        )
    if padding_mask_crop is not None:
        if not isinstance(loaded, Image.Image) or not isinstance(mask, Image.Image):
            raise InputError(
                "padding_mask_crop takes the image and the mask as PIL images or files, as "
                "diffusers does, not arrays"
            )
        if image_size(mask) != image_size(loaded):
            raise InputError("padding_mask_crop needs the mask the size of the image")
    return ImageInputs(loaded, mask, padding_mask_crop=padding_mask_crop)


def output_size(
    inputs: ImageInputs | None, manifest: Manifest, height: int | None, width: int | None
) -> tuple[int | None, int | None]:
    """Image to image keeps the image's size (rounded down to the VAE factor) unless asked
    otherwise, as diffusers does; inpainting, like diffusers, defaults to the native size."""
    if inputs is None or inputs.kind == "inpaint":
        return height, width
    f = manifest.model.vae_scale_factor
    if inputs.latents is not None:
        size = (inputs.latents.shape[2] * f, inputs.latents.shape[3] * f)
        if (height or size[0], width or size[1]) != size:
            raise InputError(
                f"the image latents make {size[1]}x{size[0]} px images, not "
                f"{width or size[1]}x{height or size[0]}; leave height and width unset"
            )
        return size
    own_height, own_width = default_size(inputs.image, f)
    asked = (own_height if height is None else height, own_width if width is None else width)
    if height is None and width is None:
        try:
            check_image_size(manifest.ranges, *asked)
        except InputError as error:
            pixels = image_size(inputs.image)
            raise InputError(f"the image is {pixels[1]}x{pixels[0]} px: {error}") from error
    return asked


def initial_latents(
    request: Request, model: ModelInfo, latents: np.ndarray | None, source: NoiseSource
) -> np.ndarray:
    """The latents the loop starts from: `latents` as given (checked), or noise drawn now."""
    f = model.vae_scale_factor
    shape = (request.batch, model.latent_channels, request.height // f, request.width // f)
    if latents is None:
        return source.randn(shape)
    latents = np.asarray(latents)
    if latents.shape != shape:
        raise InputError(f"latents must have shape {shape} for this request, got {latents.shape}")
    if not is_finite(latents):
        raise InputError("latents hold NaN or infinity; pass finite initial noise")
    return latents.astype(np.float32)


def denoiser_channels(denoiser: ComponentIO) -> int:
    return int(denoiser.input("sample").shape[1])


@dataclass(frozen=True)
class TaskSetup:
    """What making a task draws on besides the images: the checked request, the engines (the
    VAE encoder among them), the call's noise source, and its initial latents."""

    request: Request
    manifest: Manifest
    engines: Mapping[str, Engine]
    source: NoiseSource
    draw_latents: Callable[[], np.ndarray]  # the caller's latents, or noise drawn now
    latents_given: bool
    controlled: bool = False  # with ControlNets, whose pipelines have their own defaults

    @property
    def model(self) -> ModelInfo:
        return self.manifest.model

    @property
    def denoiser(self) -> Engine:
        return self.engines[family_of(self.model).denoiser]


def make_image_task(
    inputs: ImageInputs,
    setup: TaskSetup,
    strength: float | None,
    denoising_start: float | None = None,
) -> Task:
    """The task for `inputs`. From `denoising_start` on, the image is not noised (SDXL's
    base-to-refiner hand-off)."""
    request, model = setup.request, setup.model
    if denoising_start is not None and inputs.mask is not None:
        raise InputError("denoising_start is for image to image, not inpainting")
    family = family_of(model)
    if inputs.latents is not None:
        strength = _strength(strength, inputs, setup, denoising_start)
        return ImageToImage(
            _latents_for(inputs.latents, request.batch),
            None if denoising_start is not None else setup.draw_latents(),
            strength,
            family.skipped_steps(request.steps, strength),
            denoising_start,
        )
    encoder = setup.engines.get(ENCODERS[request.vae])
    if encoder is None:
        raise ArtifactError(
            "these engines have no VAE encoder, which images need; rebuild with `sdtrt build "
            "--components text_encoder,unet,vae_decoder,vae_encoder`"
        )
    strength = _strength(strength, inputs, setup, denoising_start)
    pixels = preprocess_image(inputs.image, request.height, request.width)
    if inputs.mask is None:
        if setup.latents_given:
            raise InputError(
                "latents= is for text to image and inpainting; image to image draws its noise "
                "from the seed, as diffusers' StableDiffusionImg2ImgPipeline does"
            )
        image_latents = encode_image(encoder, pixels, model, setup.source, request.vae)
        noise = None if denoising_start is not None else setup.draw_latents()
        return ImageToImage(
            repeat_to(image_latents, request.batch),
            noise,
            strength,
            family.skipped_steps(request.steps, strength),
            denoising_start,
        )
    image, mask = inputs.image, inputs.mask
    if inputs.padding_mask_crop is None:
        return _inpaint(mask, pixels, setup, encoder, strength)
    # The region around the mask, inpainted at the output size and pasted back.
    assert isinstance(image, Image.Image) and isinstance(mask, Image.Image)
    size = (request.width, request.height)
    region = mask_crop_region(mask, *size, inputs.padding_mask_crop)
    pixels = preprocess_image(fill_resize(image.crop(region), *size), request.height, request.width)
    task = _inpaint(fill_resize(mask.crop(region), *size), pixels, setup, encoder, strength)
    full_mask = mask
    task.finish = lambda generated: paste_back(generated, image, full_mask, region)
    return task


def _are_latents(image: ImageInput, model: ModelInfo) -> bool:
    return (
        isinstance(image, np.ndarray)
        and image.ndim == 4
        and image.shape[1] == model.latent_channels
        and np.issubdtype(image.dtype, np.floating)
    )


def _latents_for(latents: np.ndarray, batch: int) -> np.ndarray:
    if batch % latents.shape[0]:
        raise InputError(
            f"{latents.shape[0]} image latents cannot be shared out among {batch} images; "
            "give one per image, or one for all"
        )
    return repeat_to(latents, batch)


def _strength(
    strength: float | None, inputs: ImageInputs, setup: TaskSetup, denoising_start: float | None
) -> float:
    """The strength asked for, else diffusers' default for the model and task; denoising_start
    takes its place where given, as in diffusers."""
    family, steps = family_of(setup.model), setup.request.steps
    if strength is None:
        strength = family.default_strength(setup.model, inputs.kind, setup.controlled)
    if denoising_start is None:
        check_strength(strength, steps, family.skipped_steps)
    return strength


def _inpaint(
    mask_input: Image.Image | np.ndarray,
    pixels: np.ndarray,
    setup: TaskSetup,
    encoder: Engine,
    strength: float,
) -> Task:
    request, model, source = setup.request, setup.model, setup.source
    channels = denoiser_channels(setup.denoiser.io)
    if channels not in (model.latent_channels, INPAINT_CHANNELS):
        raise ArtifactError(
            f"the denoiser takes {channels} input channels; inpainting needs "
            f"{model.latent_channels} (an ordinary model) or {INPAINT_CHANNELS} (an inpainting "
            "model)"
        )
    dedicated = channels == INPAINT_CHANNELS
    from_noise = setup.latents_given or strength == 1.0
    image_latents = None
    if not dedicated or not from_noise:
        latents = encode_image(encoder, pixels, model, source, request.vae)
        image_latents = repeat_to(latents, request.batch)
    noise = setup.draw_latents()
    mask = preprocess_mask(mask_input, request.height, request.width)
    masked_pixels = (pixels * (mask < 0.5)).astype(np.float32)
    masked_latents = encode_image(encoder, masked_pixels, model, source, request.vae)
    f = model.vae_scale_factor
    latent_mask = nearest_resize(mask, request.height // f, request.width // f)
    return Inpaint(
        noise=noise,
        mask=repeat_to(latent_mask, request.batch),
        strength=strength,
        skipped=family_of(model).skipped_steps(request.steps, strength),
        image_latents=image_latents,
        masked_latents=repeat_to(masked_latents, request.batch) if dedicated else None,
        from_noise=from_noise,
    )
