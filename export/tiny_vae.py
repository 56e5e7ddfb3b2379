"""A tiny VAE (diffusers' `AutoencoderTiny`: TAESD, TAESDXL, TAESD3) built beside a model's own.

`sdtrt build MODEL --tiny-vae SOURCE` exports its decoder (and its encoder where the model's VAE
encoder is built) as the networks `tiny_vae_decoder` and `tiny_vae_encoder`; `sdtrt run --vae
tiny` decodes and encodes with them. A tiny VAE is a few MB and decodes many times faster than
the full one, at some cost in detail: what diffusers gives with `pipe.vae = AutoencoderTiny(...)`.
Its encoder gives latents, not a distribution to sample, so image to image draws no noise for it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdtrt.engine.manifest import TinyVaeInfo
from sdtrt.errors import InputError, ModelSourceError, first_line
from sdtrt.export.sources import digest_files, open_part

CLASS_NAME = "AutoencoderTiny"
HUB_PATTERNS = ["config.json", "*.safetensors"]


@contextmanager
def open_tiny_vae(ref: str) -> Iterator[Path]:
    """`ref` as a local AutoencoderTiny folder: an existing folder, a tiny-VAE preset (written
    for the block), or a hub id (downloaded)."""
    from sdtrt.export.presets.tiny_vae import TINY_VAE_PRESETS
    from sdtrt.export.presets.writer import write_preset

    presets = {name: functools.partial(write_preset, name) for name in TINY_VAE_PRESETS}
    with open_part(
        ref,
        kind="tiny VAE",
        class_name=CLASS_NAME,
        described=f"{CLASS_NAME} (TAESD, TAESDXL, TAESD3)",
        presets=presets,
        patterns=HUB_PATTERNS,
    ) as part:
        yield part.path


def load_tiny_vae(folder: Path) -> Any:
    """The AutoencoderTiny in `folder`, in fp32."""
    import torch
    from diffusers import AutoencoderTiny

    try:
        vae = AutoencoderTiny.from_pretrained(folder, use_safetensors=True)
    except Exception as error:  # diffusers raises many types for bad folders
        raise ModelSourceError(f"cannot load {folder}: {first_line(error)}") from error
    return vae.to(torch.float32).eval()


def scale_factor(vae: Any) -> int:
    """How many pixels a latent spans per side: one upsampling between decoder blocks."""
    config = vae.config
    return int(config.upsampling_scaling_factor) ** (len(config.decoder_block_out_channels) - 1)


def check_fits(vae: Any, latent_channels: int, vae_scale_factor: int) -> None:
    """InputError, in one line, for a tiny VAE made for another family's latents."""
    channels, factor = int(vae.config.latent_channels), scale_factor(vae)
    if (channels, factor) != (latent_channels, vae_scale_factor):
        raise InputError(
            f"the tiny VAE takes {channels}-channel latents at 1/{factor} of the image; this "
            f"model's are {latent_channels}-channel at 1/{vae_scale_factor}: use the tiny VAE "
            "made for its family (TAESD for SD 1.x/2.x, TAESDXL for SDXL, TAESD3 for SD 3)"
        )


def tiny_vae_info(vae: Any, folder: Path) -> TinyVaeInfo:
    """What the runtime needs of it: the latent scaling it was trained with, and the digest of
    its files (its networks' build key)."""
    config = vae.config
    shift = getattr(config, "shift_factor", None)
    return TinyVaeInfo(
        scaling_factor=float(config.scaling_factor),
        shift_factor=None if shift is None else float(shift),
        digest=digest_files(folder.parent, [folder.name]),
    )


def tiny_vae_specs(vae: Any, vae_scale_factor: int, components: tuple[str, ...]) -> list[Any]:
    """The tiny VAE's networks for a build of `components`: its decoder, and its encoder where
    the model's own VAE encoder is built (image to image and inpainting)."""
    from sdtrt.export.specs import TinyVaeDecoderSpec, TinyVaeEncoderSpec

    specs: list[Any] = [TinyVaeDecoderSpec(vae, vae_scale_factor)]
    if "vae_encoder" in components:
        specs.append(TinyVaeEncoderSpec(vae, vae_scale_factor))
    return specs
