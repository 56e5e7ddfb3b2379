"""Tiny VAE presets (diffusers' AutoencoderTiny, random weights): TAESD's architecture, and a
lookalike of it for the `tiny` preset's 2x VAE. Built beside a model with `--tiny-vae NAME`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TinyVaePreset:
    name: str
    description: str
    config: dict[str, Any]  # AutoencoderTiny arguments
    seed: int = 0


TAESD = TinyVaePreset(
    name="taesd",
    description="TAESD's architecture (SD 1.x/2.x; TAESDXL's is the same), 2.4 M parameters",
    config={},  # AutoencoderTiny's defaults are TAESD's
)
TINY_TAESD = TinyVaePreset(
    name="tiny-taesd",
    description="a TAESD lookalike for the tiny preset (latents at 1/2 of the image)",
    config={
        "encoder_block_out_channels": (16, 16),
        "decoder_block_out_channels": (16, 16),
        "num_encoder_blocks": (1, 2),
        "num_decoder_blocks": (2, 1),
    },
)
TINY_VAE_PRESETS = {preset.name: preset for preset in (TAESD, TINY_TAESD)}


def write_tiny_vae_files(preset: TinyVaePreset, directory: Path) -> None:
    """Write `preset` as a diffusers AutoencoderTiny folder (config.json, safetensors)."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(preset.seed)
    vae = AutoencoderTiny(**preset.config)
    vae.save_pretrained(directory, safe_serialization=True)  # type: ignore[attr-defined]
