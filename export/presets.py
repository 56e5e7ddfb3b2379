"""Built-in models made from configs with random weights: no download, real architectures.

A preset is written as an ordinary diffusers folder, so everything downstream (the build, the
tests' diffusers reference) treats it exactly like a user's model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdtrt.errors import InputError
from sdtrt.export.clip_vocab import (
    END,
    START,
    real_clip_merges,
    tiny_clip_merges,
    vocab_from_merges,
    write_clip_files,
)

# Stable Diffusion 1.x's noise schedule and default sampler, as its scheduler_config.json has them.
SD1_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]  # CLIPTextConfig arguments; vocab and special ids come later
    merges: Callable[[], list[tuple[str, str]]]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD1_SCHEDULER))
    # SD 1.x pads prompts with <|endoftext|>, SD 2.x with "!" (id 0); the text encoder attends
    # to every one of the 77 positions, so the pad token changes images.
    pad_token: str = END
    seed: int = 0
    pipeline_class: str = "StableDiffusionPipeline"  # model_index.json's _class_name


TINY = Preset(
    name="tiny",
    description="a few-MB Stable Diffusion 1.x lookalike, 64x64 px, for tests and demos",
    unet={
        "sample_size": 32,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "sample_size": 64,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
    },
    text_encoder={
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "max_position_embeddings": 77,
        "layer_norm_eps": 1e-5,
        "hidden_act": "quick_gelu",
    },
    merges=tiny_clip_merges,
)

SD15 = Preset(
    name="sd15",
    description="the Stable Diffusion 1.5 architecture (860M UNet, CLIP ViT-L/14), random weights",
    unet={
        "sample_size": 64,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "sample_size": 512,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
    },
    text_encoder={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "projection_dim": 768,
        "layer_norm_eps": 1e-5,
        "hidden_act": "quick_gelu",
    },
    merges=real_clip_merges,
)

# An inpainting model's UNet also sees the mask and the masked image's latents: 4 + 1 + 4 inputs.
TINY_INPAINT = replace(
    TINY,
    name="tiny-inpaint",
    description="the tiny model as a 9-channel inpainting model (StableDiffusionInpaintPipeline)",
    unet={**TINY.unet, "in_channels": 9},
    pipeline_class="StableDiffusionInpaintPipeline",
)

PRESETS = {p.name: p for p in (TINY, TINY_INPAINT, SD15)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}") from None


def _write_pipeline(preset: Preset, directory: Path) -> None:
    import diffusers
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer_dir = directory / "tokenizer"
    merges = preset.merges()
    vocab = vocab_from_merges(merges)
    write_clip_files(tokenizer_dir, merges, preset.pad_token)
    torch.manual_seed(preset.seed)
    unet = UNet2DConditionModel(**preset.unet)
    vae = AutoencoderKL(**preset.vae)
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab[START],
        eos_token_id=vocab[END],
        pad_token_id=vocab[preset.pad_token],
        **preset.text_encoder,
    )
    text_encoder = CLIPTextModel(text_config)
    # A fresh layer norm has no bias, so every state it outputs averages to zero; a trained
    # encoder's do not, and the A1111 emphasis divides by that average.
    norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    with torch.no_grad():
        norm.bias.normal_(mean=-0.5, std=0.5)
    pipeline = getattr(diffusers, preset.pipeline_class)(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=PNDMScheduler.from_config(preset.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)  # type: ignore[attr-defined]
    # save_pretrained rewrites the tokenizer in its own layout; restore the classic CLIP files,
    # as real Stable Diffusion folders ship them, which every transformers version reads.
    shutil.rmtree(tokenizer_dir)
    write_clip_files(tokenizer_dir, merges, preset.pad_token)


def write_preset(name: str, directory: Path) -> None:
    """Write preset `name` as a diffusers folder at `directory`, which must be new or empty."""
    write_model(get_preset(name), directory)


def write_model(preset: Preset, directory: Path) -> None:
    """Write `preset`'s model as a diffusers folder at `directory`, which must be new or empty."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError(f"{directory} already exists and is not empty; choose a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        _write_pipeline(preset, staging)
        if directory.exists():
            directory.rmdir()
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
