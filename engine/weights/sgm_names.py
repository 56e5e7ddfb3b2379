"""A UNet's modules under the names of Stability's original code (SGM / ldm): what kohya's SDXL
LoRAs call its layers (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), from
diffusers' module paths.

SGM numbers the UNet's layers in one run per side: `input_blocks.0.0` is conv_in, then each
down block's layers in turn (`.0` its resnet, `.1` its attention) and its downsampler
(`.0.op`); `middle_block.0/1/2` are resnet, attention, resnet; `output_blocks` likewise for the
up blocks, the upsampler in the block of their last layer. Inside a resnet, conv1 is
`in_layers.2`, conv2 `out_layers.3`, the time projection `emb_layers.1` and the shortcut
`skip_connection`; inside an attention the names are diffusers' own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WHOLE = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_RESNET = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_MIDDLE = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}
_IN_BLOCK = re.compile(
    r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)"
)
_IN_MIDDLE = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)")


def sgm_names(modules: Iterable[str]) -> dict[str, str]:
    """diffusers module path -> SGM module path, for those of `modules` SGM names."""
    modules = list(modules)
    layers: dict[tuple[str, int], int] = {}  # (side, block) -> resnets in it
    attended: set[tuple[str, int]] = set()
    for module in modules:
        found = _IN_BLOCK.match(module)
        if found and found[3] == "resnets":
            key = (found[1], int(found[2]))
            layers[key] = max(layers.get(key, 0), int(found[4]) + 1)
        if found and found[3] == "attentions":
            attended.add((found[1], int(found[2])))
    places = _places(layers, attended)
    names = {}
    for module in modules:
        name = _sgm_name(module, places)
        if name is not None:
            names[module] = name
    return names


def _places(
    layers: dict[tuple[str, int], int], attended: set[tuple[str, int]]
) -> dict[tuple[str, int, str, int], str]:
    """(side, block, kind, index) -> the SGM block holding that layer."""
    places = {}
    for side, first, sgm in (("down", 1, "input_blocks"), ("up", 0, "output_blocks")):
        counter = first
        blocks = sorted(block for s, block in layers if s == side)
        for block in blocks:
            for index in range(layers[(side, block)]):
                places[(side, block, "resnets", index)] = f"{sgm}.{counter}.0"
                places[(side, block, "attentions", index)] = f"{sgm}.{counter}.1"
                counter += 1
            if side == "down":
                places[(side, block, "downsamplers", 0)] = f"{sgm}.{counter}.0.op"
                counter += 1  # a block without one never has a layer named so
            else:  # in the block of the last layer, after its attention where it has one
                inner = 2 if (side, block) in attended else 1
                places[(side, block, "upsamplers", 0)] = f"{sgm}.{counter - 1}.{inner}"
    return places


def _sgm_name(module: str, places: dict[tuple[str, int, str, int], str]) -> str | None:
    if module in _WHOLE:
        return _WHOLE[module]
    found = _IN_BLOCK.match(module)
    if found:
        place = places.get((found[1], int(found[2]), found[3], int(found[4])))
        kind, rest = found[3], module[found.end() :]
    else:
        middle = _IN_MIDDLE.match(module)
        if middle is None:
            return None
        slot = _MIDDLE.get((middle[1], int(middle[2])))
        place = None if slot is None else f"middle_block.{slot}"
        kind, rest = middle[1], module[middle.end() :]
    if place is None:
        return None
    if kind == "resnets":
        part = rest.removeprefix(".")
        if part not in _RESNET:
            return None
        return f"{place}.{_RESNET[part]}"
    if kind == "downsamplers":  # SGM's `op` is the downsampler's convolution itself
        return place if rest == ".conv" else None
    return place + rest
