"""A diffusers folder written back as one A1111/ComfyUI-layout checkpoint (SD 1.x), for tests.

The original Stable Diffusion code (ldm) names the UNet by flat block lists (input_blocks,
middle_block, output_blocks) and its VAE by `down.i.block.j`; the text encoder is the Hugging
Face CLIP under `cond_stage_model.transformer.`. Written from the layouts' definitions: the
mapping is the inverse of what diffusers' single-file loader undoes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"
}  # fmt: skip


def _swap(name: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if name.startswith(old + "."):
            return new + name[len(old) :]
    return name


def unet_to_ldm(weights: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    per_down = config["layers_per_block"] + 1  # resnets plus the downsampler's slot
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    out = {}
    for name, value in weights.items():
        parts = name.split(".")
        new = _swap(name, fixed)
        if parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{(block + 1) * per_down}.0.op.{parts[-1]}"
            else:
                slot = 1 + block * per_down + index
                rest = _swap(rest, RESNET) if kind == "resnets" else rest
                new = f"input_blocks.{slot}.{0 if kind == 'resnets' else 1}.{rest}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            slot = 1 if kind == "attentions" else 2 * index
            new = f"middle_block.{slot}.{_swap(rest, RESNET) if kind == 'resnets' else rest}"
        elif parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            has_attention = any(k.startswith(f"up_blocks.{block}.attentions.") for k in weights)
            if kind == "upsamplers":
                last = block * per_down + per_down - 1
                new = f"output_blocks.{last}.{2 if has_attention else 1}.{rest}"
            else:
                slot = block * per_down + index
                rest = _swap(rest, RESNET) if kind == "resnets" else rest
                new = f"output_blocks.{slot}.{0 if kind == 'resnets' else 1}.{rest}"
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(weights: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    blocks = len(config["block_out_channels"])
    out = {}
    for name, value in weights.items():
        parts = name.split(".")
        new = name.replace("conv_norm_out", "norm_out")
        if parts[1] in ("down_blocks", "up_blocks"):
            block = int(parts[2]) if parts[1] == "down_blocks" else blocks - 1 - int(parts[2])
            side = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] in ("downsamplers", "upsamplers"):
                new = f"{parts[0]}.{side}.{block}.{side}sample.{'.'.join(parts[5:])}"
            else:
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{parts[0]}.{side}.{block}.block.{parts[4]}.{rest}"
        elif parts[1] == "mid_block":
            rest = ".".join(parts[4:])
            if parts[2] == "attentions":
                new = f"{parts[0]}.mid.attn_1.{_swap(rest, VAE_ATTENTION)}"
                if value.ndim == 2:  # ldm's attention projections are 1x1 convolutions
                    value = value[:, :, None, None]
            else:
                rest = rest.replace("conv_shortcut", "nin_shortcut")
                new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{rest}"
        out["first_stage_model." + new] = value
    return out


def write_single_file(model_dir: Path, path: Path) -> Path:
    """`model_dir` (SD 1.x diffusers folder) as one .safetensors in the original layout."""
    def config(sub: str) -> dict:
        return json.loads((model_dir / sub / "config.json").read_text())

    unet = load_file(str(model_dir / "unet/diffusion_pytorch_model.safetensors"))
    vae = load_file(str(model_dir / "vae/diffusion_pytorch_model.safetensors"))
    text = load_file(str(model_dir / "text_encoder/model.safetensors"))
    tensors = {**unet_to_ldm(unet, config("unet")), **vae_to_ldm(vae, config("vae"))}
    # Checkpoints keep CLIP's `text_model.` level, which transformers 5 no longer writes.
    prefix = "cond_stage_model.transformer.text_model."
    tensors.update({prefix + k.removeprefix("text_model."): v for k, v in text.items()})
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path
