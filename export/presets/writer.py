"""A preset written as an ordinary diffusers folder, its weights random from the preset's seed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sdtrt.errors import InputError
from sdtrt.export.clip_vocab import END, START, vocab_from_merges, write_clip_files
from sdtrt.export.presets.catalog import check_preset, get_preset
from sdtrt.export.presets.controlnet import (
    CONTROLNET_PRESETS,
    ControlNetPreset,
    write_controlnet,
)
from sdtrt.export.presets.sd3 import SD3Preset, write_sd3
from sdtrt.export.presets.table import Preset
from sdtrt.export.presets.tiny_vae import TINY_VAE_PRESETS, TinyVaePreset, write_tiny_vae_files


def _text_encoder(config: dict[str, Any], vocab: dict[str, int], pad_token: str, cls: Any) -> Any:
    import torch
    from transformers import CLIPTextConfig

    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab[START],
        eos_token_id=vocab[END],
        pad_token_id=vocab[pad_token],
        **config,
    )
    text_encoder = cls(text_config)
    # A fresh layer norm has no bias, so every state it outputs averages to zero; a trained
    # encoder's do not, and the A1111 emphasis divides by that average.
    norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    with torch.no_grad():
        norm.bias.normal_(mean=-0.5, std=0.5)
    return text_encoder


def _write_pipeline(preset: Preset, directory: Path) -> None:
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    merges = preset.merges()
    vocab = vocab_from_merges(merges)
    # Each text encoder's tokenizer folder and its pad token: SDXL's second one pads with "!".
    tokenizers = {"tokenizer": preset.pad_token}
    if preset.text_encoder_2 is not None:
        if preset.second_encoder_only:
            tokenizers = {"tokenizer_2": "!"}
        else:
            tokenizers["tokenizer_2"] = "!"
    for folder, pad in tokenizers.items():
        write_clip_files(directory / folder, merges, pad)
    torch.manual_seed(preset.seed)
    modules: dict[str, Any] = {
        "unet": UNet2DConditionModel(**preset.unet),
        "vae": AutoencoderKL(**preset.vae),
        "scheduler": getattr(diffusers, preset.scheduler_class).from_config(preset.scheduler),
    }
    if not preset.second_encoder_only:
        modules["text_encoder"] = _text_encoder(
            preset.text_encoder, vocab, preset.pad_token, CLIPTextModel
        )
    if preset.text_encoder_2 is not None:
        modules["text_encoder_2"] = _text_encoder(
            preset.text_encoder_2, vocab, "!", CLIPTextModelWithProjection
        )
    for folder in tokenizers:
        modules[folder] = CLIPTokenizer.from_pretrained(directory / folder)
    if preset.text_encoder_2 is None:
        modules.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif preset.second_encoder_only:
        modules.update(text_encoder=None, tokenizer=None)
    pipeline = getattr(diffusers, preset.pipeline_class)(**modules, **preset.pipeline_config)
    pipeline.save_pretrained(directory, safe_serialization=True)  # type: ignore[attr-defined]
    # save_pretrained rewrites the tokenizers in its own layout; restore the classic CLIP files,
    # as real Stable Diffusion folders ship them, which every transformers version reads.
    for folder, pad in tokenizers.items():
        shutil.rmtree(directory / folder)
        write_clip_files(directory / folder, merges, pad)


def write_preset(name: str, directory: Path) -> None:
    """Write preset `name` as a diffusers folder at `directory`, which must be new or empty."""
    check_preset(name)
    if name in TINY_VAE_PRESETS:
        write_model(TINY_VAE_PRESETS[name], directory)
    elif name in CONTROLNET_PRESETS:
        write_model(CONTROLNET_PRESETS[name], directory)
    else:
        write_model(get_preset(name), directory)


def write_model(
    preset: Preset | SD3Preset | TinyVaePreset | ControlNetPreset, directory: Path
) -> None:
    """Write `preset`'s model as a diffusers folder at `directory`, which must be new or empty."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError(f"{directory} already exists and is not empty; choose a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        if isinstance(preset, SD3Preset):
            write_sd3(preset, staging)
        elif isinstance(preset, TinyVaePreset):
            write_tiny_vae_files(preset, staging)
        elif isinstance(preset, ControlNetPreset):
            write_controlnet(preset, staging)
        else:
            _write_pipeline(preset, staging)
        if directory.exists():
            directory.rmdir()
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
