"""Model families: how a diffusers folder splits into networks to export.

Stable Diffusion 1.x and 2.x share one layout (one CLIP text encoder, a UNet conditioned on its
hidden states, a KL VAE); v-prediction lives in the scheduler config. A new family (SDXL: two
text encoders, pooled embeddings, time ids) adds a class with its own specs and is chosen from
model_index.json by `load_family`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtrt.engine.manifest import ModelInfo
from sdtrt.errors import ModelSourceError
from sdtrt.export.specs import (
    ComponentSpec,
    TextEncoderSpec,
    UNetSpec,
    VaeDecoderSpec,
    VaeEncoderSpec,
)

log = logging.getLogger(__name__)

STABLE_DIFFUSION = "stable-diffusion"
# Sub-folders whose contents decide what each network's export depends on.
COMPONENT_FOLDERS = {
    "text_encoder": ("text_encoder",),
    "unet": ("unet",),
    "vae_decoder": ("vae",),
    "vae_encoder": ("vae",),
}
# The VAE encoder is small beside the UNet and is what image-to-image and inpainting need.
DEFAULT_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
# One layout under several pipeline classes; an inpainting UNet differs only in its input
# channels, which its spec reads from the UNet's config.
STABLE_DIFFUSION_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
)


def read_model_index(folder: Path) -> dict[str, Any]:
    path = folder / "model_index.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelSourceError(f"{path} cannot be read ({error})") from None
    if not isinstance(data, dict):
        raise ModelSourceError(f"{path} is not a diffusers model index")
    return data


@dataclass
class StableDiffusionModel:
    """A Stable Diffusion 1.x/2.x diffusers folder, loaded into torch for export."""

    folder: Path
    name: str
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_class: str

    family = STABLE_DIFFUSION

    @classmethod
    def load(cls, folder: Path, name: str) -> StableDiffusionModel:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        index = read_model_index(folder)
        missing = [
            c for c in ("text_encoder", "tokenizer", "unet", "vae", "scheduler") if c not in index
        ]
        if missing:
            raise ModelSourceError(f"{folder} lacks {', '.join(missing)} in model_index.json")

        def load_part(loader: Any, subfolder: str) -> Any:
            try:
                return loader.from_pretrained(folder, subfolder=subfolder).eval()
            except Exception as error:  # diffusers/transformers raise many types for bad folders
                reason = (
                    str(error).strip().splitlines()[0][:200]
                    if str(error).strip()
                    else type(error).__name__
                )
                raise ModelSourceError(f"cannot load {folder / subfolder}: {reason}") from None

        return cls(
            folder=folder,
            name=name,
            text_encoder=load_part(CLIPTextModel, "text_encoder"),
            unet=load_part(UNet2DConditionModel, "unet"),
            vae=load_part(AutoencoderKL, "vae"),
            scheduler_class=str(index["scheduler"][1]),
        )

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def text_max_length(self) -> int:
        return int(self.text_encoder.config.max_position_embeddings)

    def info(self) -> ModelInfo:
        native = int(self.unet.config.sample_size) * self.vae_scale_factor
        return ModelInfo(
            family=self.family,
            name=self.name,
            native_size=(native, native),
            vae_scale_factor=self.vae_scale_factor,
            latent_channels=int(self.vae.config.latent_channels),
            vae_scaling_factor=float(self.vae.config.scaling_factor),
            vae_shift_factor=getattr(self.vae.config, "shift_factor", None),
            text_max_length=self.text_max_length,
        )

    def specs(self, components: tuple[str, ...]) -> list[ComponentSpec]:
        makers = {
            "text_encoder": lambda: TextEncoderSpec(self.text_encoder, self.text_max_length),
            "unet": lambda: UNetSpec(self.unet, self.vae_scale_factor, self.text_max_length),
            "vae_decoder": lambda: VaeDecoderSpec(self.vae, self.vae_scale_factor),
            "vae_encoder": lambda: VaeEncoderSpec(self.vae, self.vae_scale_factor),
        }
        return [makers[c]() for c in components]

    def scheduler_config(self) -> dict[str, Any]:
        """The scheduler config file as written. Keys it leaves out take each scheduler's own
        default, which is how diffusers' `from_config` treats them when schedulers are swapped."""
        path = self.folder / "scheduler" / "scheduler_config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelSourceError(f"{path} cannot be read ({error})") from None
        config.setdefault("_class_name", self.scheduler_class)
        return dict(config)


def load_family(folder: Path, name: str) -> StableDiffusionModel:
    index = read_model_index(folder)
    pipeline = index.get("_class_name")
    if pipeline not in STABLE_DIFFUSION_PIPELINES:
        raise ModelSourceError(
            f"{folder} is a {pipeline}; sdtrt builds StableDiffusionPipeline models (SD 1.x, 2.x, "
            "and their inpainting models)"
        )
    return StableDiffusionModel.load(folder, name)
