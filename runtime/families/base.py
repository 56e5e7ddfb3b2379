"""What a model family decides at run time, around the one denoising loop: how its text encoders'
outputs become the denoiser's inputs, which of diffusers' pipeline arguments it takes, and
diffusers' defaults for it. One module per family implements it; `family_of` picks by the
manifest's family name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdtrt.engine.manifest import ModelInfo
from sdtrt.errors import InputError
from sdtrt.runtime.guidance import guidance_embedding
from sdtrt.runtime.request import Request


@dataclass(frozen=True)
class EncodedText:
    """One text encoder's output for a request's rows (negative prompts, then prompts, as
    diffusers orders them; prompts alone where the negatives are not encoded)."""

    states: np.ndarray  # (rows, tokens, width)
    pooled: np.ndarray | None  # (rows, width), for encoders with a pooled projection


# Family-specific pipeline arguments (make_request's names), and the families that take them.
TAKEN_BY = {
    "prompt_2": "SDXL and SD 3",
    "negative_prompt_2": "SDXL and SD 3",
    "sizes": "SDXL",  # the size and aesthetic conditioning
    "prompt_3": "SD 3",
    "negative_prompt_3": "SD 3",
    "max_sequence_length": "SD 3",
    "skip_guidance_layers": "SD 3",
    "prompt_syntax": "SD 1.x, 2.x and SDXL",  # the A1111 syntax
}
_SPOKEN = {
    "sizes": "the size and aesthetic conditioning",
    "prompt_syntax": "the A1111 prompt syntax",
}


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
    # Whether the denoiser predicts a flow-matching velocity (SD 3) rather than noise: it then
    # takes flow-matching schedulers only, and they only it.
    flow_matching: ClassVar[bool] = False
    # Text encoders with T5's tokenizer (runtime/t5.py); the others are CLIP's.
    t5_encoders: ClassVar[tuple[str, ...]] = ()
    # The family-specific pipeline arguments it takes (TAKEN_BY's names).
    takes: ClassVar[frozenset[str]] = frozenset({"prompt_syntax"})

    def check_arguments(self, model: ModelInfo, given: Mapping[str, object]) -> None:
        """Refuse, in one line, the family-specific pipeline arguments in `given` (name ->
        value, None when not given) that this family does not take."""
        refused = [name for name, value in given.items() if value is not None]
        refused = [name for name in refused if name not in self.takes]
        if refused:
            takers = TAKEN_BY[refused[0]]
            listed = " and ".join(
                _SPOKEN.get(name, name) for name in refused if TAKEN_BY[name] == takers
            )
            raise InputError(f"{listed}: for {takers} models; this is a {model.family} model")

    @property
    def reads_a1111_prompts(self) -> bool:
        """Whether prompts may be written in the A1111 web UI's syntax."""
        return "prompt_syntax" in self.takes

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

    def default_guidance(self, model: ModelInfo, task: str, controlled: bool = False) -> float:
        """The guidance scale diffusers' pipeline for the model and task ("txt2img", "img2img"
        or "inpaint"), with ControlNets (`controlled`) or not, uses when none is given."""
        if model.guidance_embedding_dim is not None:
            return 8.5  # LatentConsistencyModelPipeline
        return 7.5

    def default_steps(self, model: ModelInfo, task: str) -> int:
        """Likewise for the steps: a latent consistency model samples in a few."""
        return 4 if model.guidance_embedding_dim is not None else 50

    def skipped_steps(self, steps: int, strength: float) -> int:
        """Steps an input image's strength leaves out: diffusers' `t_start` in
        `get_timesteps`, which rounds the steps kept down."""
        return max(steps - min(int(steps * strength), steps), 0)

    def scheduler_config(
        self, config: Mapping[str, Any], request: Request, model: ModelInfo
    ) -> dict[str, Any]:
        """The scheduler config for a call: the model's, plus what its pipeline passes the
        scheduler beside it."""
        return dict(config)

    def default_strength(self, model: ModelInfo, kind: str, controlled: bool = False) -> float:
        """Likewise for the strength of image to image ("img2img") and inpainting ("inpaint"),
        with ControlNets (`controlled`) or not: StableDiffusionImg2ImgPipeline 0.8,
        StableDiffusionInpaintPipeline 1.0, and their ControlNet pipelines alike."""
        return 0.8 if kind == "img2img" else 1.0

    def default_controlnet_scale(self, task: str) -> float:
        """The ControlNets' conditioning scale diffusers' ControlNet pipeline for the task
        ("txt2img", "img2img", "inpaint") uses when none is given."""
        return {"img2img": 0.8, "inpaint": 0.5}.get(task, 1.0)
