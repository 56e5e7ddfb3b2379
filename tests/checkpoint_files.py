"""A diffusers folder written back as one A1111/ComfyUI-layout checkpoint, for tests.

The original Stable Diffusion code (ldm) names the UNet by flat block lists (input_blocks,
middle_block, output_blocks) and its VAE by `down.i.block.j`. SD 1.x keeps the Hugging Face CLIP
under `cond_stage_model.transformer.`; SD 2.x an OpenCLIP under `cond_stage_model.model.`
(residual blocks, one fused q/k/v projection); SDXL the CLIP as `conditioner.embedders.0` and
the OpenCLIP (with its text projection) as `conditioner.embedders.1`, and its UNet's added
embedding as `label_emb`. Written from the layouts' definitions: the mapping is the inverse of
what diffusers' single-file loader undoes.
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
        "add_embedding.linear_1": "label_emb.0.0",  # SDXL's pooled prompt and time ids
        "add_embedding.linear_2": "label_emb.0.2",
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


OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}  # fmt: skip


def clip_to_ldm(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """A Hugging Face CLIP text model under `prefix`, keeping CLIP's `text_model.` level, which
    transformers 5 no longer writes."""
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in weights.items()}


def open_clip_to_ldm(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """A CLIP text model as OpenCLIP names it under `prefix`: q, k and v in one projection."""
    weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    out = {
        "token_embedding.weight": weights.pop("embeddings.token_embedding.weight"),
        "positional_embedding": weights.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": weights.pop("final_layer_norm.weight"),
        "ln_final.bias": weights.pop("final_layer_norm.bias"),
    }
    weights.pop("embeddings.position_ids", None)
    if "text_projection.weight" in weights:
        out["text_projection"] = weights.pop("text_projection.weight").T
    for name in [n for n in weights if ".self_attn.q_proj." in n]:
        layer, kind = name.split(".")[2], name.rsplit(".", 1)[1]
        parts = [weights.pop(name.replace(".q_proj.", f".{p}_proj.")) for p in "qkv"]
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = np.concatenate(parts)
    for name, value in weights.items():  # encoder.layers.i.<module>.<param>
        _, _, layer, rest = name.split(".", 3)
        out[f"transformer.resblocks.{layer}.{_swap(rest, OPEN_CLIP_LAYER)}"] = value
    return {prefix + k: v for k, v in out.items()}


def write_single_file(model_dir: Path, path: Path) -> Path:
    """`model_dir` (an SD 1.x, SD 2.x or SDXL diffusers folder) as one .safetensors in the
    original layout; the family is the model index's."""
    def config(sub: str) -> dict:
        return json.loads((model_dir / sub / "config.json").read_text())

    def weights(sub: str, name: str = "diffusion_pytorch_model") -> dict[str, np.ndarray]:
        return load_file(str(model_dir / sub / f"{name}.safetensors"))

    unet, vae, text = weights("unet"), weights("vae"), weights("text_encoder", "model")
    tensors = {**unet_to_ldm(unet, config("unet")), **vae_to_ldm(vae, config("vae"))}
    if (model_dir / "text_encoder_2").is_dir():  # SDXL
        tensors.update(clip_to_ldm(text, "conditioner.embedders.0.transformer."))
        second = weights("text_encoder_2", "model")
        tensors.update(open_clip_to_ldm(second, "conditioner.embedders.1.model."))
    elif config("text_encoder")["hidden_act"] == "gelu":  # SD 2.x's OpenCLIP
        tensors.update(open_clip_to_ldm(text, "cond_stage_model.model."))
    else:
        tensors.update(clip_to_ldm(text, "cond_stage_model.transformer."))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def controlnet_to_ldm(weights: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """A ControlNetModel's weights in the original ControlNet code's layout: the UNet's encoder
    as the UNet's, then the hint encoder's convolutions at even indices of `input_hint_block`
    (SiLUs between), the per-level outputs as `zero_convs`, all under `control_model.`."""
    hint_blocks = len({k.split(".")[2] for k in weights if ".blocks." in k})
    fixed = {
        "controlnet_mid_block": "middle_block_out.0",
        "controlnet_cond_embedding.conv_in": "input_hint_block.0",
        "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * (hint_blocks + 1)}",
    }
    out = {}
    for name, value in weights.items():
        parts = name.split(".")
        if parts[0] == "controlnet_down_blocks":
            new = f"zero_convs.{parts[1]}.0.{parts[2]}"
        elif parts[:2] == ["controlnet_cond_embedding", "blocks"]:
            new = f"input_hint_block.{2 * (int(parts[2]) + 1)}.{parts[3]}"
        elif parts[0].startswith("controlnet_"):
            new = _swap(name, fixed)
        else:
            (unet_name,) = unet_to_ldm({name: value}, config)
            new = unet_name.removeprefix("model.diffusion_model.")
        out["control_model." + new] = value
    return out
