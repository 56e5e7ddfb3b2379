"""ControlNets built beside a model (`sdtrt build MODEL --controlnet SOURCE`, repeatable).

Each is a network of the engine directory, `controlnet/<name>`, named after its folder or file
(or preset, or the last part of its hub id); the UNet is then built to take their residuals
(export/specs/residuals.py). A ControlNet is checked against the model before anything is
built: it must mirror the UNet's encoder and read hints at the model's VAE factor.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtrt.engine.layout import controlnet_component
from sdtrt.engine.manifest import ControlNetInfo
from sdtrt.engine.tensors import TensorSpec
from sdtrt.errors import InputError, ModelSourceError, first_line
from sdtrt.export.controlnet_file import convert_controlnet_file
from sdtrt.export.sources import digest_files, open_part

if TYPE_CHECKING:
    from sdtrt.export.specs.controlnet import ControlNetSpec

CLASS_NAME = "ControlNetModel"
HUB_PATTERNS = ["config.json", "diffusion_pytorch_model.safetensors"]
# What must be equal between a ControlNet's config and the UNet's for its residuals to fit.
MATCHED = (
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "cross_attention_dim",
    "addition_embed_type",
    "projection_class_embeddings_input_dim",
)


@dataclass(frozen=True)
class ControlNetSource:
    name: str  # its network is controlnet/<name>, the name made fit for a folder
    folder: Path
    config: Mapping[str, Any]
    origin: Path  # what its build key digests: the folder, or the single file it was read from


@contextmanager
def open_controlnets(refs: tuple[str, ...], model: Path) -> Iterator[list[ControlNetSource]]:
    """Each of `refs` as a local ControlNetModel folder (an existing folder, a single
    `.safetensors` file read for the UNet of the diffusers folder `model`, a ControlNet preset
    written for the block, or a hub id), named, in the order given."""
    with ExitStack() as stack:
        sources = [_open(ref, model, stack) for ref in refs]
        names = [source.name for source in sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InputError(
                f"two ControlNets would both be named '{repeated[0]}'; give each its own "
                "folder name"
            )
        yield sources


def _open(ref: str, model: Path, stack: ExitStack) -> ControlNetSource:
    from sdtrt.export.presets.controlnet import CONTROLNET_PRESETS, write_controlnet

    file = Path(ref).expanduser()
    if file.is_file():
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdtrt-cn-")))
        folder = scratch / file.stem
        convert_controlnet_file(file.resolve(), _unet_config(model), folder)
        config = json.loads((folder / "config.json").read_text())
        return ControlNetSource(_folder_name(file.stem), folder, config, file.resolve())
    presets = {
        name: functools.partial(write_controlnet, preset)
        for name, preset in CONTROLNET_PRESETS.items()
    }
    part = stack.enter_context(
        open_part(
            ref,
            kind="ControlNet",
            class_name=CLASS_NAME,
            described=f"a {CLASS_NAME}",
            presets=presets,
            patterns=HUB_PATTERNS,
        )
    )
    return ControlNetSource(_folder_name(part.name), part.path, part.config, part.path)


def _unet_config(model: Path) -> dict[str, Any]:
    """The config of the UNet of the diffusers folder `model`, which a ControlNet mirrors."""
    try:
        config: dict[str, Any] = json.loads((model / "unet" / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(
            "ControlNets are built for SD 1.x, 2.x and SDXL models; this model has no "
            "readable unet/config.json"
        ) from error
    return config


def _folder_name(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "controlnet"


def check_fits(source: ControlNetSource, unet_config: Any, latents: tuple[int, int]) -> None:
    """InputError, in one line, for a ControlNet made for another model (`latents`: its latent
    channels and VAE factor). An inpainting UNet takes a ControlNet of plain latents."""
    config = source.config
    latent_channels, vae_scale_factor = latents
    if int(config.get("in_channels", 4)) != latent_channels:
        raise InputError(
            f"the ControlNet '{source.name}' reads {config.get('in_channels')}-channel latents; "
            f"this model's have {latent_channels}"
        )
    for key in MATCHED:
        theirs, ours = config.get(key), getattr(unet_config, key, None)
        if _comparable(theirs) != _comparable(ours):
            raise InputError(
                f"the ControlNet '{source.name}' was made for another model ({key} "
                f"{theirs}, this model's UNet has {ours}): use a ControlNet for this family"
            )
    embedding = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
    factor = 2 ** (len(embedding) - 1)
    if factor != vae_scale_factor:
        raise InputError(
            f"the ControlNet '{source.name}' reads hints at 1/{factor} of the latents' pixels; "
            f"this model's latents are 1/{vae_scale_factor} of the image"
        )
    if int(config.get("conditioning_channels", 3)) != 3:
        raise InputError(
            f"the ControlNet '{source.name}' reads {config['conditioning_channels']}-channel "
            "hints; sdtrt builds ControlNets of RGB hints"
        )
    if config.get("global_pool_conditions"):
        raise InputError(
            f"the ControlNet '{source.name}' pools its conditions globally (a shuffle "
            "ControlNet), which sdtrt does not build yet"
        )


def _comparable(value: Any) -> Any:
    """Config values as JSON and diffusers' loaded configs both hold them (lists, tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    return value


def load_controlnet(source: ControlNetSource) -> Any:
    """The ControlNetModel of `source`, in fp32."""
    import torch
    from diffusers import ControlNetModel

    try:
        module = ControlNetModel.from_pretrained(source.folder, use_safetensors=True)
    except Exception as error:  # diffusers raises many types for bad folders
        raise ModelSourceError(f"cannot load {source.folder}: {first_line(error)}") from error
    return module.to(torch.float32).eval()


def controlnet_spec(
    source: ControlNetSource,
    conditioning: tuple[TensorSpec, ...],
    vae_scale_factor: int,
    max_length: int,
) -> ControlNetSpec:
    """The network of `source`; its weights are read only if it is built (not reused)."""
    import torch
    from diffusers import ControlNetModel

    from sdtrt.export.specs.controlnet import ControlNetSpec

    with torch.device("meta"):
        skeleton = ControlNetModel.from_config(dict(source.config))
    return ControlNetSpec(
        controlnet_component(source.name),
        skeleton,
        lambda: load_controlnet(source),
        conditioning,
        vae_scale_factor,
        max_length,
    )


def controlnet_info(source: ControlNetSource) -> ControlNetInfo:
    """Its name and the digest of its files (its network's build key)."""
    return ControlNetInfo(
        name=source.name, digest=digest_files(source.origin.parent, [source.origin.name])
    )
