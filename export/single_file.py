"""Single-file checkpoints (the A1111 / ComfyUI / model-site layout) to a diffusers folder, offline.

A single file holds the weights in the original Stable Diffusion code's names
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*` or SDXL's
`conditioner.embedders.*`) and no configs. The family is told from the tensor names (SD 1.x: a
Hugging Face CLIP under `cond_stage_model.transformer`; SD 2.x: an OpenCLIP under
`cond_stage_model.model`; SDXL: a CLIP as embedder 0 and an OpenCLIP as embedder 1), and the
architecture from the tensor sizes, matched against the architectures sdtrt ships configs for
(SD 1.x, SD 2.x, SDXL base, and the tiny presets). Those configs, the CLIP tokenizer files and a
scheduler config are written to a scratch folder, and diffusers' `from_single_file` reads the
weights with that folder as its `config=`, with no download.

A `.ckpt` is a Python pickle, which can run code while it loads: refused unless allowed.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdtrt.engine.weights.safetensors import SafetensorsFile
from sdtrt.errors import ModelSourceError, first_line
from sdtrt.export.clip_vocab import (
    END,
    START,
    vocab_from_merges,
    write_clip_files,
)
from sdtrt.export.presets import SD15, SDXL, TINY, TINY_SDXL, TINY_V, Preset

log = logging.getLogger(__name__)

SAFETENSORS, PICKLE = (".safetensors",), (".ckpt", ".pt", ".pth", ".bin")
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CLIP_TOKENS = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.embeddings.token_embedding.weight",
)
OPEN_CLIP_TOKENS = "cond_stage_model.model.token_embedding.weight"
SDXL_MARKER = "conditioner.embedders."
SDXL_CLIP_TOKENS = (
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
)
SDXL_OPEN_CLIP_TOKENS = "conditioner.embedders.1.model.token_embedding.weight"

# Stable Diffusion 2.x (768-v, as diffusers assumes for a 2.x single file): OpenCLIP ViT-H as
# a Hugging Face CLIP without its last layer (SD 2.x reads the penultimate one), linear
# projections, 64-channel attention heads, v-prediction.
SD2 = replace(
    SD15,
    name="sd2",
    description="the Stable Diffusion 2.x (768-v) architecture",
    unet={
        **SD15.unet,
        "sample_size": 96,
        "attention_head_dim": (5, 10, 20, 20),
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
    },
    vae={**SD15.vae, "sample_size": 768},
    text_encoder={
        **SD15.text_encoder,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 23,
        "projection_dim": 512,
        "hidden_act": "gelu",
    },
    scheduler={**SD15.scheduler, "prediction_type": "v_prediction"},
    pad_token="!",
)


def _sizes(family: str, preset: Preset) -> tuple[str, int, int]:
    """(family, first UNet channels, width of the last text encoder): what a file shows."""
    text = preset.text_encoder_2 or preset.text_encoder
    return family, int(preset.unet["block_out_channels"][0]), int(text["hidden_size"])


# What a checkpoint's sizes say its architecture is.
ARCHITECTURES = {
    _sizes(family, preset): preset
    for family, preset in (
        ("sd1", SD15),
        ("sd2", SD2),
        ("sdxl", SDXL),
        ("sd1", TINY),
        ("sd2", TINY_V),
        ("sdxl", TINY_SDXL),
    )
}


def is_single_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SAFETENSORS + PICKLE


def _shapes(path: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the header alone for .safetensors."""
    if path.suffix.lower() in SAFETENSORS:
        return SafetensorsFile(path).shapes()
    if not allow_pickle:
        raise ModelSourceError(
            f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded; "
            "use a .safetensors file, or pass --allow-pickle if you trust its source"
        )
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle raises anything
        raise ModelSourceError(f"cannot read {path}: {type(error).__name__}") from error
    state = data.get("state_dict", data) if isinstance(data, dict) else {}
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def detect_architecture(path: Path, allow_pickle: bool = False) -> Preset:
    """The architecture of the checkpoint at `path`, from its tensor names and sizes."""
    shapes = _shapes(path, allow_pickle)
    if UNET_IN not in shapes:
        raise ModelSourceError(
            f"{path.name} is not a Stable Diffusion checkpoint (no {UNET_IN}); "
            "pass a diffusers folder or an SD 1.x/2.x/SDXL single file"
        )
    clip = next((shapes[name] for name in CLIP_TOKENS if name in shapes), None)
    if any(name.startswith(SDXL_MARKER) for name in shapes):
        if SDXL_CLIP_TOKENS not in shapes or SDXL_OPEN_CLIP_TOKENS not in shapes:
            raise ModelSourceError(
                f"{path.name} is an SDXL checkpoint without both text encoders (a refiner?); "
                "sdtrt reads SDXL base single files: build a refiner from its diffusers folder"
            )
        family, width = "sdxl", shapes[SDXL_OPEN_CLIP_TOKENS][1]
    elif clip is not None:
        family, width = "sd1", clip[1]
    elif OPEN_CLIP_TOKENS in shapes:
        family, width = "sd2", shapes[OPEN_CLIP_TOKENS][1]
    else:
        raise ModelSourceError(
            f"{path.name} has no text encoder sdtrt recognises (SD 1.x, 2.x, SDXL)"
        )
    channels = shapes[UNET_IN][0]
    preset = ARCHITECTURES.get((family, channels, width))
    if preset is None:
        raise ModelSourceError(
            f"{path.name}: an {family} checkpoint of unknown size (UNet {channels} channels, "
            f"text width {width}); convert it to a diffusers folder and build from that"
        )
    log.info("%s: %s architecture", path.name, preset.name)
    return preset


def _text_encoders(preset: Preset) -> dict[str, tuple[str, dict[str, Any], str, str]]:
    """Text-encoder folder -> (its tokenizer folder, config, pad token, transformers class)."""
    encoders = {
        "text_encoder": ("tokenizer", preset.text_encoder, preset.pad_token, "CLIPTextModel")
    }
    if preset.text_encoder_2 is not None:
        encoders["text_encoder_2"] = (
            "tokenizer_2",
            preset.text_encoder_2,
            "!",
            "CLIPTextModelWithProjection",
        )
    return encoders


def write_configs(preset: Preset, folder: Path) -> list[tuple[str, str]]:
    """What `from_single_file` needs besides weights: the pipeline's configs and tokenizer
    files; returns the tokenizers' merge list."""
    from transformers import CLIPTextConfig

    merges = preset.merges()
    vocab = vocab_from_merges(merges)
    index: dict[str, Any] = {"_class_name": preset.pipeline_class, **preset.pipeline_config}
    for encoder, (tokenizer, config, pad, cls) in _text_encoders(preset).items():
        write_clip_files(folder / tokenizer, merges, pad)
        CLIPTextConfig(
            vocab_size=len(vocab),
            bos_token_id=vocab[START],
            eos_token_id=vocab[END],
            pad_token_id=vocab[pad],
            **config,
        ).save_pretrained(folder / encoder)
        index[encoder] = ["transformers", cls]
        index[tokenizer] = ["transformers", "CLIPTokenizer"]
    configs = {
        "unet": {"_class_name": "UNet2DConditionModel", **preset.unet},
        "vae": {"_class_name": "AutoencoderKL", **preset.vae},
        "scheduler": {"_class_name": preset.scheduler_class, **preset.scheduler},
    }
    for sub, config in configs.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        name = "scheduler_config.json" if sub == "scheduler" else "config.json"
        (folder / sub / name).write_text(json.dumps(config, indent=2), encoding="utf-8")
        index[sub] = ["diffusers", config["_class_name"]]
    if preset.text_encoder_2 is None:
        index.update(
            safety_checker=[None, None],
            feature_extractor=[None, None],
            requires_safety_checker=False,
        )
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return merges


def convert_single_file(path: Path, output: Path, allow_pickle: bool = False) -> None:
    """Write the checkpoint at `path` as a diffusers folder at `output` (new), offline."""
    import diffusers

    preset = detect_architecture(path, allow_pickle)
    configs = output.with_name(output.name + "-configs")
    merges = write_configs(preset, configs)
    try:
        pipe = getattr(diffusers, preset.pipeline_class).from_single_file(
            str(path), config=str(configs), local_files_only=True
        )
    except Exception as error:  # diffusers raises many types for files it cannot map
        raise ModelSourceError(
            f"cannot read {path.name} as a {preset.name} checkpoint: {first_line(error)}"
        ) from error
    pipe.save_pretrained(output, safe_serialization=True)
    # save_pretrained writes the tokenizers in its own layout; keep the classic CLIP files.
    for tokenizer, _, pad, _ in _text_encoders(preset).values():
        shutil.rmtree(output / tokenizer)
        write_clip_files(output / tokenizer, merges, pad)
