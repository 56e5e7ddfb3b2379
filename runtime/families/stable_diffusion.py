"""Stable Diffusion 1.x and 2.x (v-prediction and latent consistency models among them): one CLIP
text encoder whose states the UNet attends to, as StableDiffusionPipeline conditions it."""

from __future__ import annotations

import numpy as np

from sdtrt.engine.manifest import STABLE_DIFFUSION, ModelInfo
from sdtrt.runtime.families.base import EncodedText, Family, per_image
from sdtrt.runtime.request import Request


class StableDiffusion(Family):
    name = STABLE_DIFFUSION

    def text_inputs(
        self, request: Request, texts: list[EncodedText], model: ModelInfo
    ) -> dict[str, np.ndarray]:
        (text,) = texts
        return {"encoder_hidden_states": per_image(text.states, request)}
