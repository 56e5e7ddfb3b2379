"""ControlNet presets (diffusers' ControlNetModel, random weights): each made from a model
preset's UNet, as `ControlNetModel.from_unet` makes one, for `--controlnet NAME`.

A trained ControlNet starts from zeroed output convolutions and learns them; here they are
drawn at random like every other weight, so that a preset's hint changes the image as a
trained one's does (zeros would make every hint a no-op, and no test could tell).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdtrt.export.presets.table import SD15, SDXL, TINY, TINY_SDXL, Preset


@dataclass(frozen=True)
class ControlNetPreset:
    name: str
    description: str
    base: Preset  # the model whose UNet it mirrors
    # Its hint encoder's channels: one stride-2 step between each, so as many as make the
    # model's VAE factor.
    embedding_channels: tuple[int, ...] = (16, 32, 96, 256)
    seed: int = 0


TINY_CONTROLNET = ControlNetPreset(
    name="tiny-controlnet",
    description="a ControlNet for the tiny preset",
    base=TINY,
    embedding_channels=(16, 32),  # the tiny VAE's factor is 2
)
TINY_CONTROLNET_2 = ControlNetPreset(
    name="tiny-controlnet-2",
    description="a second ControlNet for the tiny preset (other weights), to combine",
    base=TINY,
    embedding_channels=(16, 32),
    seed=1,
)
TINY_SDXL_CONTROLNET = ControlNetPreset(
    name="tiny-sdxl-controlnet",
    description="a ControlNet for the tiny-sdxl preset",
    base=TINY_SDXL,
    embedding_channels=(16, 32),
)
SD15_CONTROLNET = ControlNetPreset(
    name="sd15-controlnet",
    description="SD 1.5 ControlNet's architecture (canny, depth, pose...), 361 M parameters",
    base=SD15,
)
SDXL_CONTROLNET = ControlNetPreset(
    name="sdxl-controlnet",
    description="SDXL ControlNet's architecture, 1.25 B parameters",
    base=SDXL,
)
CONTROLNET_PRESETS = {
    preset.name: preset
    for preset in (
        TINY_CONTROLNET,
        TINY_CONTROLNET_2,
        TINY_SDXL_CONTROLNET,
        SD15_CONTROLNET,
        SDXL_CONTROLNET,
    )
}


def write_controlnet(preset: ControlNetPreset, directory: Path) -> None:
    """Write `preset` as a diffusers ControlNetModel folder (config.json, safetensors)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(preset.seed)
    with torch.device("meta"):  # the UNet lends its config only
        unet = UNet2DConditionModel(**preset.base.unet)
    controlnet = ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=preset.embedding_channels,
        load_weights_from_unet=False,
    )
    zeroed = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    for convolution in zeroed:
        convolution.reset_parameters()
    controlnet.save_pretrained(directory, safe_serialization=True)
