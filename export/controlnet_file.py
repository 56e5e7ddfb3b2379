"""A ControlNet as one `.safetensors` file (`--controlnet control_v11p_sd15_canny.safetensors`),
read into a diffusers ControlNetModel folder, offline.

Such files come in two layouts: diffusers' own names (`controlnet_cond_embedding.*`,
`down_blocks.*`), and the original ControlNet code's (`input_hint_block.*`, `zero_convs.*`,
`input_blocks.*`, often under `control_model.`), which diffusers' `from_single_file` converts. A
file has no config: a ControlNet mirrors its model's UNet, so the config is the UNet's, with what
the weights themselves show (the hint encoder's channels; in diffusers' layout, each block's
transformer depth, which SDXL's smaller ControlNets cut down).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from sdtrt.engine.weights.safetensors import SafetensorsFile
from sdtrt.errors import ModelSourceError, first_line

CLASS_NAME = "ControlNetModel"
# The original layout's hint encoder: convolutions at even indices, SiLUs between.
ORIGINAL_HINT = re.compile(r"(?:control_model\.)?input_hint_block\.(\d+)\.weight")
DIFFUSERS_HINT = re.compile(r"controlnet_cond_embedding\.(conv_in|blocks\.(\d+))\.weight")
DIFFUSERS_DEPTH = re.compile(r"down_blocks\.(\d+)\.attentions\.0\.(?:transformer_blocks\.(\d+)\.)?")


def controlnet_config(path: Path, unet_config: dict[str, Any]) -> dict[str, Any]:
    """The ControlNetModel config of the file at `path`, for a model whose UNet's config is
    `unet_config`."""
    from diffusers import ControlNetModel

    if path.suffix.lower() != ".safetensors":
        raise ModelSourceError(
            f"{path.name} is not a .safetensors file (a pickle can run code as it loads); "
            "convert the ControlNet to .safetensors"
        )
    try:
        shapes = SafetensorsFile(path).shapes()
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"cannot read {path.name}: {first_line(error)}") from error
    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    config = {key: value for key, value in unet_config.items() if key in accepted}
    config["_class_name"] = CLASS_NAME
    config["conditioning_embedding_out_channels"] = _hint_channels(path, shapes)
    config.update(_transformer_depths(shapes, config))
    return config


def _hint_channels(path: Path, shapes: dict[str, tuple[int, ...]]) -> list[int]:
    """The hint encoder's channels: each convolution's output but the last (which gives the
    UNet's first channels), repeats dropped (each level has two convolutions)."""
    original = sorted(
        (int(found[1]), shape[0])
        for name, shape in shapes.items()
        if (found := ORIGINAL_HINT.fullmatch(name))
    )
    if original:
        outputs = [channels for _, channels in original][:-1]
    else:
        diffusers = sorted(
            (-1 if found[2] is None else int(found[2]), shape[0])
            for name, shape in shapes.items()
            if (found := DIFFUSERS_HINT.fullmatch(name))
        )
        outputs = [channels for _, channels in diffusers]
    channels = [c for i, c in enumerate(outputs) if i == 0 or c != outputs[i - 1]]
    if not channels:
        raise ModelSourceError(
            f"{path.name} is not a ControlNet (no hint encoder: input_hint_block or "
            "controlnet_cond_embedding)"
        )
    return channels


def _transformer_depths(
    shapes: dict[str, tuple[int, ...]], config: dict[str, Any]
) -> dict[str, Any]:
    """In diffusers' layout, each down block's transformer depth as its weights show (SDXL's
    small and mid ControlNets have fewer layers than the UNet); nothing for the original layout,
    whose ControlNets keep the UNet's."""
    depths: dict[int, set[int]] = {}
    for name in shapes:
        if found := DIFFUSERS_DEPTH.match(name):
            layers = depths.setdefault(int(found[1]), set())
            if found[2] is not None:
                layers.add(int(found[2]))
    if not depths:
        return {}
    levels = len(config.get("down_block_types") or ())
    unet_depths = config.get("transformer_layers_per_block", 1)
    if isinstance(unet_depths, int):
        unet_depths = [unet_depths] * levels
    found_depths = [
        len(depths[level]) if level in depths else depth for level, depth in enumerate(unet_depths)
    ]
    return {"transformer_layers_per_block": found_depths}


def convert_controlnet_file(path: Path, unet_config: dict[str, Any], output: Path) -> None:
    """Write the ControlNet file at `path` as a ControlNetModel folder at `output` (new)."""
    from diffusers import ControlNetModel

    config = controlnet_config(path, unet_config)
    configs = output.with_name(output.name + "-config")
    configs.mkdir(parents=True)
    (configs / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    try:
        controlnet = ControlNetModel.from_single_file(
            str(path), config=str(configs), local_files_only=True
        )
    except Exception as error:  # diffusers raises many types for files it cannot map
        misfit = re.search(r"because (\S+) expected shape", str(error))
        reason = (
            f"its {misfit[1]} is shaped for another model; use a ControlNet made for this "
            "model's family"
            if misfit
            else first_line(error)
        )
        raise ModelSourceError(
            f"cannot read {path.name} as a ControlNet for this model: {reason}"
        ) from error
    controlnet.save_pretrained(output, safe_serialization=True)
