"""Model families on the export side: how a diffusers folder splits into networks to export, one
module per family. `load_family` chooses by the pipeline class model_index.json names."""

from __future__ import annotations

from pathlib import Path

from sdtrt.errors import ModelSourceError
from sdtrt.export.families.diffusers_folder import read_model_index
from sdtrt.export.families.stable_diffusion import StableDiffusionModel
from sdtrt.export.families.stable_diffusion_3 import StableDiffusion3Model
from sdtrt.export.families.stable_diffusion_xl import StableDiffusionXLModel

Family = StableDiffusionModel | StableDiffusionXLModel | StableDiffusion3Model
FAMILIES: tuple[type[Family], ...] = (
    StableDiffusionModel,
    StableDiffusionXLModel,
    StableDiffusion3Model,
)
# Every network any family exports, for refusing an unknown one before a model is read.
KNOWN_COMPONENTS = tuple(sorted({c for family in FAMILIES for c in family.COMPONENT_FOLDERS}))


def load_family(
    folder: Path, name: str, components: tuple[str, ...] | None = None, sixteen_bit: bool = False
) -> Family:
    """The model in `folder`, with the torch modules `components` (every default one when
    None) are exported from; `sixteen_bit`: a build that stores 16-bit weights, where the
    family's biggest text encoder (SD 3's T5-XXL) is loaded in 16 bits (export/lean.py)."""
    pipeline = read_model_index(folder).get("_class_name")
    for family in FAMILIES:
        if pipeline in family.PIPELINES:
            return family.load(folder, name, components, sixteen_bit)
    raise ModelSourceError(
        f"{folder} is a {pipeline}; sdtrt builds Stable Diffusion 1.x and 2.x, SDXL (base, "
        "refiner), SD 3 and 3.5, their inpainting models and latent consistency models"
    )


__all__ = ["FAMILIES", "KNOWN_COMPONENTS", "Family", "load_family"]
