"""The tiny preset made to overflow fp16: one attention value projection and one VAE up-block
convolution scaled up so that activations pass 65504 (fp16's largest value) in fp32."""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.numpy import load_file, save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"
# (folder, weight, factor): the attention values and the resnet output reach ~2e5-5e5 in fp32.
SCALED = (
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v.weight", 1e5),
    ("vae", "decoder.up_blocks.0.resnets.0.conv2.weight", 3e5),
)


def write_overflow_model(tiny_model_dir: Path, target: Path) -> Path:
    """A copy of the tiny model at `target` with the weights in SCALED multiplied up."""
    shutil.copytree(tiny_model_dir, target)
    for folder, name, factor in SCALED:
        path = target / folder / WEIGHTS
        weights = load_file(str(path))
        weights[name] = weights[name] * weights[name].dtype.type(factor)
        save_file(weights, str(path), metadata={"format": "pt"})
    return target
