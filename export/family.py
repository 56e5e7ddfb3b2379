"""Model families: how a diffusers folder splits into networks to export.

Stable Diffusion 1.x and 2.x share one layout (one CLIP text encoder, a UNet conditioned on its
hidden states, a KL VAE); v-prediction lives in the scheduler config, and a latent consistency
model's guidance embedding in its UNet's config. SDXL has two text encoders (a refiner only the
second), whose states the UNet takes side by side, and conditions its UNet on the second
encoder's pooled output and a few size numbers. `load_family` chooses from model_index.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtrt.engine.manifest import STABLE_DIFFUSION, STABLE_DIFFUSION_XL, ModelInfo
from sdtrt.errors import InputError, ModelSourceError, first_line
from sdtrt.export.specs import (
    ComponentSpec,
    TextEncoderSpec,
    UNetSpec,
    VaeDecoderSpec,
    VaeEncoderSpec,
    XLTextEncoderSpec,
)

log = logging.getLogger(__name__)

# Sub-folders whose contents decide what each network's export depends on.
COMPONENT_FOLDERS = {
    "text_encoder": ("text_encoder",),
    "text_encoder_2": ("text_encoder_2",),
    "unet": ("unet",),
    "vae_decoder": ("vae",),
    "vae_encoder": ("vae",),
}
# Each text encoder's tokenizer folder.
TOKENIZER_FOLDERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
XL_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# The VAE encoder is small beside the UNet and is what image-to-image and inpainting need.
DEFAULT_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
# One layout under several pipeline classes; an inpainting UNet differs only in its input
# channels, which its spec reads from the UNet's config.
STABLE_DIFFUSION_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "LatentConsistencyModelPipeline",
)
STABLE_DIFFUSION_XL_PIPELINES = (
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
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


def _load_part(folder: Path, loader: Any, subfolder: str) -> Any:
    try:
        return loader.from_pretrained(folder, subfolder=subfolder).eval()
    except Exception as error:  # diffusers/transformers raise many types for bad folders
        raise ModelSourceError(f"cannot load {folder / subfolder}: {first_line(error)}") from None


def _check_index(folder: Path, index: dict[str, Any], needed: tuple[str, ...]) -> None:
    # A refiner's model_index.json names its absent first text encoder as [null, null].
    missing = [c for c in needed if not (isinstance(index.get(c), list) and index[c][0])]
    if missing:
        raise ModelSourceError(f"{folder} lacks {', '.join(missing)} in model_index.json")


def _scheduler_config(folder: Path, scheduler_class: str) -> dict[str, Any]:
    """The scheduler config file as written. Keys it leaves out take each scheduler's own
    default, which is how diffusers' `from_config` treats them when schedulers are swapped."""
    path = folder / "scheduler" / "scheduler_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelSourceError(f"{path} cannot be read ({error})") from None
    config.setdefault("_class_name", scheduler_class)
    return dict(config)


def _vae_scale_factor(vae: Any) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def _guidance_embedding_dim(unet: Any) -> int | None:
    dim = getattr(unet.config, "time_cond_proj_dim", None)
    return None if dim is None else int(dim)


def _check_components(folder: Path, asked: tuple[str, ...], present: tuple[str, ...]) -> None:
    missing = [c for c in asked if c not in present]
    if missing:
        raise InputError(
            f"{folder} has no {', '.join(missing)}; its components are {', '.join(present)}"
        )


class _DiffusersFolder:
    """What the families share: the model facts the runtime needs, and the scheduler config.
    Subclasses are dataclasses with the fields named here."""

    folder: Path
    name: str
    family: str
    unet: Any
    vae: Any
    scheduler_class: str
    vae_scale_factor: int
    text_max_length: int

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
            guidance_embedding_dim=_guidance_embedding_dim(self.unet),
            **self.conditioning_info(),
        )

    def conditioning_info(self) -> dict[str, Any]:
        """The family's own ModelInfo fields."""
        return {}

    def scheduler_config(self) -> dict[str, Any]:
        return _scheduler_config(self.folder, self.scheduler_class)

    @property
    def makes_images_from_text(self) -> bool:
        """Whether diffusers' text-to-image pipeline can run this model (w8a8 calibrates on its
        runs): not an inpainting UNet, which also takes a masked image."""
        return int(self.unet.config.in_channels) == int(self.vae.config.latent_channels)

    def text_to_image_pipeline(self, scheduler_config: dict[str, Any]) -> Any:
        """diffusers' text-to-image pipeline over the loaded modules, with the model's own
        scheduler (`scheduler_config`, as `scheduler_config()` read it)."""
        raise NotImplementedError

    def _scheduler(self, config: dict[str, Any]) -> Any:
        import diffusers

        return getattr(diffusers, self.scheduler_class).from_config(config)

    def _tokenizer(self, subfolder: str) -> Any:
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(self.folder, subfolder=subfolder)


def _shared_parts(
    folder: Path, name: str, index: dict[str, Any], vae: Any, text_encoder: Any
) -> dict[str, Any]:
    """The fields every family loads alike; `text_encoder` sets the prompt length."""
    from diffusers import UNet2DConditionModel

    return {
        "folder": folder,
        "name": name,
        "unet": _load_part(folder, UNet2DConditionModel, "unet"),
        "vae": vae,
        "scheduler_class": str(index["scheduler"][1]),
        "vae_scale_factor": _vae_scale_factor(vae),
        "text_max_length": int(text_encoder.config.max_position_embeddings),
    }


@dataclass
class StableDiffusionModel(_DiffusersFolder):
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

    @classmethod
    def load(cls, folder: Path, name: str) -> StableDiffusionModel:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        index = read_model_index(folder)
        _check_index(folder, index, ("text_encoder", "tokenizer", "unet", "vae", "scheduler"))
        text_encoder = _load_part(folder, CLIPTextModel, "text_encoder")
        vae = _load_part(folder, AutoencoderKL, "vae")
        return cls(
            text_encoder=text_encoder, **_shared_parts(folder, name, index, vae, text_encoder)
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

    def specs(self, components: tuple[str, ...]) -> list[ComponentSpec]:
        makers = {
            "text_encoder": lambda: TextEncoderSpec(self.text_encoder, self.text_max_length),
            "unet": lambda: UNetSpec(self.unet, self.vae_scale_factor, self.text_max_length),
            "vae_decoder": lambda: VaeDecoderSpec(self.vae, self.vae_scale_factor),
            "vae_encoder": lambda: VaeEncoderSpec(self.vae, self.vae_scale_factor),
        }
        _check_components(self.folder, components, tuple(makers))
        return [makers[c]() for c in components]


@dataclass
class StableDiffusionXLModel(_DiffusersFolder):
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

    @classmethod
    def load(cls, folder: Path, name: str) -> StableDiffusionXLModel:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        index = read_model_index(folder)
        _check_index(folder, index, ("text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"))
        first = isinstance(index.get("text_encoder"), list) and bool(index["text_encoder"][0])
        if first:
            _check_index(folder, index, ("tokenizer",))
        text_encoder_2 = _load_part(folder, CLIPTextModelWithProjection, "text_encoder_2")
        vae = _load_part(folder, AutoencoderKL, "vae")
        model = cls(
            **_shared_parts(folder, name, index, vae, text_encoder_2),
            text_encoder=_load_part(folder, CLIPTextModel, "text_encoder") if first else None,
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
        _check_components(self.folder, components, self.default_components)
        return [makers[c]() for c in components]


Family = StableDiffusionModel | StableDiffusionXLModel


def load_family(folder: Path, name: str) -> Family:
    index = read_model_index(folder)
    pipeline = index.get("_class_name")
    if pipeline in STABLE_DIFFUSION_XL_PIPELINES:
        return StableDiffusionXLModel.load(folder, name)
    if pipeline not in STABLE_DIFFUSION_PIPELINES:
        raise ModelSourceError(
            f"{folder} is a {pipeline}; sdtrt builds Stable Diffusion 1.x and 2.x, SDXL (base, "
            "refiner), their inpainting models and latent consistency models"
        )
    return StableDiffusionModel.load(folder, name)
