"""The model families on the runtime side, by the family name a manifest records."""

from __future__ import annotations

from sdtrt.engine.manifest import ModelInfo
from sdtrt.errors import ArtifactError
from sdtrt.runtime.families.base import EncodedText, Family
from sdtrt.runtime.families.stable_diffusion import StableDiffusion
from sdtrt.runtime.families.stable_diffusion_3 import StableDiffusion3
from sdtrt.runtime.families.stable_diffusion_xl import StableDiffusionXL

FAMILIES: dict[str, Family] = {
    family.name: family for family in (StableDiffusion(), StableDiffusionXL(), StableDiffusion3())
}


def family_of(model: ModelInfo) -> Family:
    """The family of a built model; one line where this sdtrt does not know it."""
    try:
        return FAMILIES[model.family]
    except KeyError as error:
        raise ArtifactError(
            f"these engines are of the {model.family} family, which this sdtrt does not run; "
            "upgrade sdtrt"
        ) from error


__all__ = ["FAMILIES", "EncodedText", "Family", "family_of"]
