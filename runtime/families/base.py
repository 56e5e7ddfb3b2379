"""What a model family decides at run time, around the one denoising loop: how its text encoders'
outputs become the denoiser's inputs, which of diffusers' pipeline arguments it takes, and
diffusers' defaults for it. One module per family implements it; `family_of` picks by the
manifest's family name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sdtrt.engine.manifest import ModelInfo
from sdtrt.runtime.guidance import guidance_embedding
from sdtrt.runtime.request import Request


@dataclass(frozen=True)
class EncodedText:
    """One text encoder's output for a request's rows (negative prompts, then prompts, as
    diffusers orders them; prompts alone where the negatives are not encoded)."""

    states: np.ndarray  # (rows, tokens, width)
    pooled: np.ndarray | None  # (rows, width), for encoders with a pooled projection


def per_image(rows: np.ndarray, request: Request) -> np.ndarray:
    """Rows per prompt repeated for that prompt's images, as diffusers repeats them."""
    return np.repeat(rows, request.images_per_prompt, axis=0)


class Family:
    """Stable Diffusion's way, which the other families change where they differ."""

    name: ClassVar[str]
    # The component that predicts the noise (a UNet; SD 3's transformer).
    denoiser: ClassVar[str] = "unet"
    # Whether `Pipeline.set_loras` re-weights its engines (engine/weights/switch.py).
    switches_loras: ClassVar[bool] = True

    def check_arguments(self, model: ModelInfo, given: Mapping[str, object]) -> None:
        """Refuse the family-specific pipeline arguments in `given` (name -> value, None when
        not given) that this family does not take."""

    def denoiser_inputs(
        self, request: Request, texts: list[EncodedText], model: ModelInfo
    ) -> dict[str, np.ndarray]:
        """Every denoiser input besides the latents and the timestep, from the text encoders'
        outputs (in the manifest's order of the encoders)."""
        inputs = self.text_inputs(request, texts, model)
        if model.guidance_embedding_dim is not None:  # a latent consistency model
            scales = np.full((request.batch,), request.guidance_scale, dtype=np.float32)
            inputs["timestep_cond"] = guidance_embedding(scales, model.guidance_embedding_dim)
        return inputs

    def text_inputs(
        self, request: Request, texts: list[EncodedText], model: ModelInfo
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def default_guidance(self, model: ModelInfo, inpainting: bool) -> float:
        """The guidance scale diffusers' pipeline for the model and task uses when none is
        given."""
        if model.guidance_embedding_dim is not None:
            return 8.5  # LatentConsistencyModelPipeline
        return 7.5

    def default_steps(self, model: ModelInfo) -> int:
        """Likewise for the steps: a latent consistency model samples in a few."""
        return 4 if model.guidance_embedding_dim is not None else 50

    def default_strength(self, model: ModelInfo, kind: str) -> float:
        """Likewise for the strength of image to image ("img2img") and inpainting ("inpaint"):
        StableDiffusionImg2ImgPipeline 0.8, StableDiffusionInpaintPipeline 1.0."""
        return 0.8 if kind == "img2img" else 1.0
