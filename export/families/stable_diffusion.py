"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, a UNet conditioned on its hidden states,
a KL VAE. v-prediction lives in the scheduler config, and a latent consistency model's guidance
embedding in its UNet's config; an inpainting UNet differs only in its input channels, which
its spec reads from the UNet's config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtrt.engine.manifest import STABLE_DIFFUSION
from sdtrt.export.families.diffusers_folder import (
    DiffusersModel,
    check_components,
    check_index,
    load_part,
    read_model_index,
    shared_parts,
)
from sdtrt.export.specs import (
    ComponentSpec,
    TextEncoderSpec,
    UNetSpec,
    VaeDecoderSpec,
    VaeEncoderSpec,
)

# The VAE encoder is small beside the UNet and is what image-to-image and inpainting need.
DEFAULT_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


@dataclass
class StableDiffusionModel(DiffusersModel):
    """A Stable Diffusion 1.x/2.x diffusers folder, loaded into torch for export."""

    folder: Path
    name: str
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_class: str
    # Read from the modules at load: the build releases each module once exported.
    vae_scale_factor: int
    text_max_length: int

    family = STABLE_DIFFUSION
    COMPONENT_FOLDERS = {
        "text_encoder": ("text_encoder",),
        "unet": ("unet",),
        "vae_decoder": ("vae",),
        "vae_encoder": ("vae",),
    }
    TOKENIZER_FOLDERS = {"text_encoder": "tokenizer"}
    # One layout under several pipeline classes.
    PIPELINES = (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
        "LatentConsistencyModelPipeline",
    )

    @classmethod
    def load(
        cls,
        folder: Path,
        name: str,
        components: tuple[str, ...] | None = None,
        sixteen_bit: bool = False,  # every module of the family is loaded in fp32
    ) -> StableDiffusionModel:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        index = read_model_index(folder)
        check_index(folder, index, ("text_encoder", "tokenizer", "unet", "vae", "scheduler"))
        text_encoder = load_part(folder, CLIPTextModel, "text_encoder")
        vae = load_part(folder, AutoencoderKL, "vae")
        return cls(
            text_encoder=text_encoder, **shared_parts(folder, name, index, vae, text_encoder)
        )

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return ("text_encoder",)

    @property
    def default_components(self) -> tuple[str, ...]:
        return DEFAULT_COMPONENTS

    def text_to_image_pipeline(self, scheduler_config: dict[str, Any]) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self._tokenizer("tokenizer"),
            unet=self.unet,
            scheduler=self._scheduler(scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def prompt_arguments(self, pipeline: Any, prompt: str, negative_prompt: str) -> dict[str, Any]:
        """`pipeline`'s arguments that carry `prompt` already encoded, as its own call would
        encode it: the text encoders can go before the UNet runs."""
        embeds, negative = pipeline.encode_prompt(
            prompt, "cpu", 1, self.guided, negative_prompt=negative_prompt
        )
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}

    def specs(self, components: tuple[str, ...]) -> list[ComponentSpec]:
        makers = {
            "text_encoder": lambda: TextEncoderSpec(self.text_encoder, self.text_max_length),
            "unet": lambda: UNetSpec(self.unet, self.vae_scale_factor, self.text_max_length),
            "vae_decoder": lambda: VaeDecoderSpec(self.vae, self.vae_scale_factor),
            "vae_encoder": lambda: VaeEncoderSpec(self.vae, self.vae_scale_factor),
        }
        check_components(self.folder, components, tuple(makers))
        return [makers[c]() for c in components]
