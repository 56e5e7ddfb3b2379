"""Stable Diffusion 3 and 3.5: both CLIP encoders' penultimate states side by side, padded to
T5's width and followed by T5's states in one token sequence, and both CLIP encoders' pooled
outputs joined (`pooled_projections`), as StableDiffusion3Pipeline makes them. Without T5 its
states are zeros. Sampled by flow matching."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sdtrt.engine.manifest import STABLE_DIFFUSION_3, ModelInfo
from sdtrt.runtime.families.base import EncodedText, Family, per_image
from sdtrt.runtime.request import Request
from sdtrt.runtime.schedulers.flow_match import MU, image_shift
from sdtrt.runtime.skip_guidance import LAYER_MASK

T5_ENCODER = "text_encoder_3"


class StableDiffusion3(Family):
    name = STABLE_DIFFUSION_3
    denoiser = "transformer"
    switches_loras = False  # SD 3 LoRAs' layer names are not mapped yet
    flow_matching = True
    t5_encoders = (T5_ENCODER,)
    # Not the A1111 syntax: its weights are not mapped onto T5's tokens yet.
    takes = frozenset(
        {
            "prompt_2",
            "negative_prompt_2",
            "prompt_3",
            "negative_prompt_3",
            "max_sequence_length",
            "skip_guidance_layers",
        }
    )

    def text_inputs(
        self, request: Request, texts: list[EncodedText], model: ModelInfo
    ) -> dict[str, np.ndarray]:
        clip_l, clip_g, *t5 = texts
        width = model.joint_attention_dim
        assert width is not None and clip_l.pooled is not None and clip_g.pooled is not None
        clip = np.concatenate([clip_l.states, clip_g.states], axis=-1)
        clip = np.pad(clip, ((0, 0), (0, 0), (0, width - clip.shape[-1])))
        if t5:
            t5_states = t5[0].states
        else:  # diffusers' zeros for a model without T5
            t5_states = np.zeros((clip.shape[0], request.max_sequence_length, width), np.float32)
        states = np.concatenate([clip, t5_states], axis=1)
        pooled = np.concatenate([clip_l.pooled, clip_g.pooled], axis=-1)
        assert model.transformer_layers is not None
        return {
            "encoder_hidden_states": per_image(states, request),
            "pooled_projections": per_image(pooled, request),
            LAYER_MASK: np.ones(model.transformer_layers, np.float32),  # every layer runs
        }

    def default_guidance(self, model: ModelInfo, task: str, controlled: bool = False) -> float:
        """StableDiffusion3Pipeline's 7.0, for every task; none for a Turbo model, as its model
        card runs it."""
        return 0.0 if model.few_step else 7.0

    def default_steps(self, model: ModelInfo, task: str) -> int:
        """28 for text to image; the image-to-image and inpainting pipelines keep 50; 4 for a
        Turbo model."""
        if model.few_step:
            return 4
        return 28 if task == "txt2img" else 50

    def default_strength(self, model: ModelInfo, kind: str, controlled: bool = False) -> float:
        """StableDiffusion3Img2ImgPipeline's and …InpaintPipeline's 0.6."""
        return 0.6

    def skipped_steps(self, steps: int, strength: float) -> int:
        """SD 3's `get_timesteps` keeps `steps x strength` steps before rounding down."""
        return int(max(steps - min(steps * strength, steps), 0))

    def scheduler_config(
        self, config: Mapping[str, Any], request: Request, model: ModelInfo
    ) -> dict[str, Any]:
        """Models that shift their schedule by the image's size get `mu` for its patches."""
        result = dict(config)
        if config.get("use_dynamic_shifting"):
            patch = model.vae_scale_factor * (model.patch_size or 1)
            result[MU] = image_shift(config, (request.height // patch) * (request.width // patch))
        return result
