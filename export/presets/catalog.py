"""Every preset by name: the UNet models' (table.py) and SD 3's (sd3.py)."""

from __future__ import annotations

from sdtrt.errors import InputError
from sdtrt.export.presets.controlnet import CONTROLNET_PRESETS
from sdtrt.export.presets.sd3 import SD35_MEDIUM, TINY_SD3, TINY_SD3_TURBO, SD3Preset
from sdtrt.export.presets.table import UNET_PRESETS, Preset
from sdtrt.export.presets.tiny_vae import TINY_VAE_PRESETS

PRESETS: dict[str, Preset | SD3Preset] = {
    **UNET_PRESETS,
    **{preset.name: preset for preset in (TINY_SD3, TINY_SD3_TURBO, SD35_MEDIUM)},
}


def get_preset(name: str) -> Preset | SD3Preset:
    try:
        return PRESETS[name]
    except KeyError as error:
        raise InputError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}") from error


def check_preset(name: str) -> None:
    """InputError, in one line, for a name that is neither a model nor a tiny VAE preset."""
    if name not in PRESETS and name not in TINY_VAE_PRESETS and name not in CONTROLNET_PRESETS:
        names = ", ".join([*PRESETS, *TINY_VAE_PRESETS, *CONTROLNET_PRESETS])
        raise InputError(f"unknown preset '{name}'; choose one of: {names}")
