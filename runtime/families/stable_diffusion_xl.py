"""SDXL (base, refiner, inpainting, Turbo): both text encoders' states side by side, the second
encoder's pooled output (`text_embeds`) and the size numbers (`time_ids`), as
StableDiffusionXLPipeline makes them; a refiner has the second encoder only, and an aesthetic
score among its size numbers. Without a negative prompt, the unconditional rows are zeros where
the model says so (`force_zeros_for_empty_prompt`)."""

from __future__ import annotations

import numpy as np

from sdtrt.engine.manifest import STABLE_DIFFUSION_XL, ModelInfo
from sdtrt.runtime.families.base import EncodedText, Family, per_image
from sdtrt.runtime.request import Request


class StableDiffusionXL(Family):
    name = STABLE_DIFFUSION_XL
    takes = frozenset({"prompt_2", "negative_prompt_2", "sizes", "prompt_syntax"})

    def text_inputs(
        self, request: Request, texts: list[EncodedText], model: ModelInfo
    ) -> dict[str, np.ndarray]:
        states = np.concatenate([text.states for text in texts], axis=-1)
        pooled = next(text.pooled for text in reversed(texts) if text.pooled is not None)
        if request.guided and request.zero_negatives:
            states = np.concatenate([np.zeros_like(states), states])
            pooled = np.concatenate([np.zeros_like(pooled), pooled])
        return {
            "encoder_hidden_states": per_image(states, request),
            "text_embeds": per_image(pooled, request),
            "time_ids": _time_ids(request, model),
        }

    def default_guidance(self, model: ModelInfo, task: str, controlled: bool = False) -> float:
        """StableDiffusionXLPipeline's 5; its inpainting pipeline keeps SD's 7.5, but not its
        ControlNet inpainting pipeline."""
        if model.guidance_embedding_dim is not None or (task == "inpaint" and not controlled):
            return super().default_guidance(model, task)
        return 5.0

    def default_strength(self, model: ModelInfo, kind: str, controlled: bool = False) -> float:
        """StableDiffusionXLImg2ImgPipeline 0.3 (its ControlNet pipeline 0.8),
        StableDiffusionXLInpaintPipeline 0.9999 (its ControlNet pipeline too)."""
        if kind == "img2img":
            return 0.8 if controlled else 0.3
        return 0.9999

    def default_controlnet_scale(self, task: str) -> float:
        """StableDiffusionXLControlNetImg2ImgPipeline 0.8; the others 1.0."""
        return 0.8 if task == "img2img" else 1.0


def _time_ids(request: Request, model: ModelInfo) -> np.ndarray:
    """The size numbers per row: original size, crop, then the target size or, for a refiner,
    the aesthetic score (the negative rows' own score)."""
    sizes = request.sizes
    output = (request.height, request.width)
    start = [*(sizes.original_size or output), *sizes.crops_coords_top_left]
    if model.requires_aesthetics_score:
        positive = [*start, sizes.aesthetic_score]
        negative = [*start, sizes.negative_aesthetic_score]
    else:
        positive = negative = [*start, *(sizes.target_size or output)]
    rows = [positive] * request.batch
    if request.guided:
        rows = [negative] * request.batch + rows
    return np.asarray(rows, dtype=np.float32)
