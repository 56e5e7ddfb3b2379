"""SDXL (base, refiner, inpainting, Turbo): two text encoders (a refiner only the second), whose
states the UNet takes side by side; the UNet is also conditioned on the second encoder's pooled
output and a few size numbers (or, for a refiner, an aesthetic score)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtrt.engine.manifest import STABLE_DIFFUSION_XL
from sdtrt.errors import ModelSourceError
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
    UNetSpec,
    VaeDecoderSpec,
    VaeEncoderSpec,
    XLTextEncoderSpec,
)

XL_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass
class StableDiffusionXLModel(DiffusersModel):
    """An SDXL diffusers folder (base, refiner or inpainting), loaded into torch for export."""

    folder: Path
    name: str
    text_encoder: Any | None  # None for a refiner
    text_encoder_2: Any
    unet: Any
    vae: Any
    scheduler_class: str
    force_zeros_for_empty_prompt: bool
    requires_aesthetics_score: bool
    # Read from the modules at load: the build releases each module once exported.
    vae_scale_factor: int
    text_max_length: int
    pooled_dim: int  # the second text encoder's projection
    text_encoders: tuple[str, ...]  # both, or a refiner's second only

    family = STABLE_DIFFUSION_XL
    COMPONENT_FOLDERS = {
        "text_encoder": ("text_encoder",),
        "text_encoder_2": ("text_encoder_2",),
        "unet": ("unet",),
        "vae_decoder": ("vae",),
        "vae_encoder": ("vae",),
    }
    TOKENIZER_FOLDERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
    PIPELINES = (
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    )

    @classmethod
    def load(
        cls,
        folder: Path,
        name: str,
        components: tuple[str, ...] | None = None,
        sixteen_bit: bool = False,  # every module of the family is loaded in fp32
    ) -> StableDiffusionXLModel:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        index = read_model_index(folder)
        check_index(folder, index, ("text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"))
        first = isinstance(index.get("text_encoder"), list) and bool(index["text_encoder"][0])
        if first:
            check_index(folder, index, ("tokenizer",))
        text_encoder_2 = load_part(folder, CLIPTextModelWithProjection, "text_encoder_2")
        vae = load_part(folder, AutoencoderKL, "vae")
        model = cls(
            **shared_parts(folder, name, index, vae, text_encoder_2),
            text_encoder=load_part(folder, CLIPTextModel, "text_encoder") if first else None,
            text_encoder_2=text_encoder_2,
            pooled_dim=int(text_encoder_2.config.projection_dim),
            text_encoders=XL_TEXT_ENCODERS if first else ("text_encoder_2",),
            # diffusers' defaults for these pipeline arguments when the index leaves them out.
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
            requires_aesthetics_score=bool(index.get("requires_aesthetics_score", False)),
        )
        model.check_unet()
        return model

    @property
    def default_components(self) -> tuple[str, ...]:
        return (*self.text_encoders, "unet", "vae_decoder", "vae_encoder")

    @property
    def makes_images_from_text(self) -> bool:
        return self.text_encoder is not None and super().makes_images_from_text  # not a refiner

    def text_to_image_pipeline(self, scheduler_config: dict[str, Any]) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self._tokenizer("tokenizer"),
            tokenizer_2=self._tokenizer("tokenizer_2"),
            unet=self.unet,
            scheduler=self._scheduler(scheduler_config),
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )

    def prompt_arguments(self, pipeline: Any, prompt: str, negative_prompt: str) -> dict[str, Any]:
        """`pipeline`'s arguments that carry `prompt` already encoded, as its own call would
        encode it: the text encoders can go before the UNet runs."""
        encoded = pipeline.encode_prompt(
            prompt,
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=self.guided,
            negative_prompt=negative_prompt,
        )
        names = (
            "prompt_embeds",
            "negative_prompt_embeds",
            "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds",
        )
        return dict(zip(names, encoded, strict=True))

    @property
    def time_ids(self) -> int:
        """Size numbers the UNet is conditioned on: 6 (original size, crop, target size) or,
        with an aesthetic score in place of the target size, 5."""
        return 5 if self.requires_aesthetics_score else 6

    def check_unet(self) -> None:
        """The UNet's added-embedding input must be the pooled prompt and the time ids, as
        diffusers checks before a call."""
        config = self.unet.config
        expected = self.pooled_dim + self.time_ids * int(config.addition_time_embed_dim or 0)
        got = config.projection_class_embeddings_input_dim
        if config.addition_embed_type != "text_time" or got != expected:
            raise ModelSourceError(
                f"{self.folder}: the UNet expects an added embedding of {got} values, but a pooled "
                f"prompt of {self.pooled_dim} and {self.time_ids} time ids make {expected}; check "
                "requires_aesthetics_score in model_index.json (true for a refiner)"
            )

    def conditioning_info(self) -> dict[str, Any]:
        return {
            "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt,
            "requires_aesthetics_score": self.requires_aesthetics_score,
        }

    def specs(self, components: tuple[str, ...]) -> list[ComponentSpec]:
        f, length = self.vae_scale_factor, self.text_max_length
        makers = {
            "text_encoder": lambda: XLTextEncoderSpec("text_encoder", self.text_encoder, length),
            "text_encoder_2": lambda: XLTextEncoderSpec(
                "text_encoder_2", self.text_encoder_2, length
            ),
            "unet": lambda: UNetSpec(self.unet, f, length, self.pooled_dim, self.time_ids),
            "vae_decoder": lambda: VaeDecoderSpec(self.vae, f),
            "vae_encoder": lambda: VaeEncoderSpec(self.vae, f),
        }
        check_components(self.folder, components, self.default_components)
        return [makers[c]() for c in components]
