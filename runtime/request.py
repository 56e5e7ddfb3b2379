"""A pipeline call as a checked request: what every stage of the call reads (made by
runtime/arguments.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sdtrt.runtime.noise import NoiseKind
from sdtrt.runtime.preprocess import default_size
from sdtrt.runtime.prompt_syntax import PromptSyntax
from sdtrt.runtime.skip_guidance import SkipLayers
from sdtrt.runtime.timings import Timings
from sdtrt.runtime.vae import VaeChoice


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's micro-conditioning, diffusers' arguments of the same names: sizes in pixels as
    (height, width), None meaning the output size; the refiner's aesthetic scores."""

    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5

    @classmethod
    def given(cls, **values: Any) -> SizeConditioning | None:
        """The conditioning a call sets (None: not set), or None where it sets none of it,
        which leaves the defaults."""
        chosen = {name: value for name, value in values.items() if value is not None}
        return cls(**chosen) if chosen else None


@dataclass(frozen=True)
class Request:
    prompts: list[str]
    negative_prompts: list[str]
    height: int
    width: int
    steps: int
    guidance_scale: float
    images_per_prompt: int
    scheduler: str
    seed: int
    noise: NoiseKind
    prompt_syntax: PromptSyntax = "diffusers"
    clip_skip: int | None = None  # diffusers' meaning: layers skipped from the end
    # SDXL: the second text encoder's prompts (diffusers' prompt_2), the first's by default.
    prompts_2: list[str] | None = None
    negative_prompts_2: list[str] | None = None
    # SD 3: T5's prompts (diffusers' prompt_3), the first's by default, and T5's length.
    prompts_3: list[str] | None = None
    negative_prompts_3: list[str] | None = None
    max_sequence_length: int = 256
    skip_layers: SkipLayers | None = None  # SD 3's skip-layer guidance
    # SDXL with force_zeros_for_empty_prompt and no negative prompt: zero conditioning.
    zero_negatives: bool = False
    sizes: SizeConditioning = SizeConditioning()
    guidance_embedded: bool = False  # the UNet takes the scale (latent consistency models)
    vae: VaeChoice = "full"  # or the tiny VAE built beside it (runtime/vae.py)

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.images_per_prompt

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs only above 1, as in diffusers, and never for a UNet
        that embeds the guidance scale."""
        return self.guidance_scale > 1.0 and not self.guidance_embedded


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet in a call: its hint image (as given), scale and active fraction."""

    name: str
    hint: Image.Image | np.ndarray
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class Controls:
    units: tuple[ControlUnit, ...]
    guess_mode: bool = False

    def size(self, height: int | None, width: int | None, factor: int) -> tuple[int, int]:
        """The output size asked for, else the first hint's rounded down to the VAE factor:
        what diffusers' ControlNet pipelines default to."""
        own_height, own_width = default_size(self.units[0].hint, factor)
        return (own_height if height is None else height, own_width if width is None else width)


@dataclass
class GenerationOutput:
    """What a pipeline call returns: its images, the request they were made for, and where
    the time went."""

    images: list[Image.Image] | np.ndarray
    request: Request
    timings: Timings
    strength: float | None = None  # of an input image; None for text to image
    controls: Controls | None = None  # the ControlNets it used
