"""Built-in models made from configs with random weights: no download, real architectures.

A preset is written as an ordinary diffusers folder, so everything downstream (the build, the
tests' diffusers reference) treats it exactly like a user's model. The configs and the table of
presets by name live in `table`; writing one as a folder in `writer`.
"""

from __future__ import annotations

from sdtrt.export.presets.catalog import PRESETS, check_preset, get_preset
from sdtrt.export.presets.sd3 import TINY_SD3, SD3Preset
from sdtrt.export.presets.table import (
    EULER_TRAILING,
    LCM_SCHEDULER,
    SD1_SCHEDULER,
    SD15,
    SDXL,
    SDXL_SCHEDULER,
    TINY,
    TINY_INPAINT,
    TINY_LCM,
    TINY_SDXL,
    TINY_SDXL_INPAINT,
    TINY_SDXL_REFINER,
    TINY_SDXL_TURBO,
    TINY_TURBO,
    TINY_V,
    Preset,
)
from sdtrt.export.presets.writer import write_model, write_preset

__all__ = [
    "EULER_TRAILING",
    "LCM_SCHEDULER",
    "PRESETS",
    "SD1_SCHEDULER",
    "SD15",
    "SDXL",
    "SDXL_SCHEDULER",
    "TINY",
    "TINY_INPAINT",
    "TINY_LCM",
    "TINY_SD3",
    "TINY_SDXL",
    "TINY_SDXL_INPAINT",
    "TINY_SDXL_REFINER",
    "TINY_SDXL_TURBO",
    "TINY_TURBO",
    "TINY_V",
    "Preset",
    "SD3Preset",
    "check_preset",
    "get_preset",
    "write_model",
    "write_preset",
]
