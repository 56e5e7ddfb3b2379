"""The /v1 API's request and response bodies."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

# Strict: "20" or 20.5 or true for steps is a client bug worth a 422, not something to coerce.
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # strict floats still take JSON integers


def _seed_from_text(value: object) -> object:
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,20}", value):
        return int(value)
    return value


# A seed may also come as a string of digits: JavaScript's numbers are exact only up to 2**53,
# and seeds go up to 2**64 - 1.
Seed = Annotated[Int, BeforeValidator(_seed_from_text)]


Pair = Annotated[tuple[Int, Int], Field(description="Two whole numbers.")]


class ControlUnitBody(BaseModel):
    """A ControlNet of the request, with its hint."""

    model_config = ConfigDict(extra="forbid")

    image: Annotated[str, Strict()] = Field(description="The hint image, base64.")
    controlnet: Annotated[str, Strict()] | None = Field(
        None, description="Which built ControlNet (name each unit's, or none: every built one)."
    )
    scale: Number | None = Field(
        None, description="Its conditioning scale; diffusers' default for the task if unset."
    )
    start: Number = Field(0.0, description="The fraction of the steps after which it acts.")
    end: Number = Field(1.0, description="The fraction of the steps after which it stops.")
    preprocessor: Literal["none", "canny"] = Field(
        "none", description="Make the hint from the image: canny (its edges), or none (as sent)."
    )
    thresholds: tuple[Number, Number] | None = Field(
        None, description="canny's low and high thresholds; (100, 200) if unset."
    )


class Txt2ImgRequest(BaseModel):
    """The `sdtrt run` command's parameters."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Strict()] = Field(description="What to draw.")
    negative_prompt: Annotated[str, Strict()] = Field("", description="What to steer away from.")
    steps: Int = Field(50, description="Denoising steps.")
    guidance: Number | None = Field(
        None,
        description="Classifier-free guidance scale; 1 turns it off. The model's default if unset.",
    )
    seed: Seed | None = Field(
        None,
        description="Seed for the initial noise, 0 to 2**64 - 1 (a number, or its digits as a "
        "string); random (32 bits) if unset.",
    )
    height: Int | None = Field(None, description="Pixels; the model's native size if unset.")
    width: Int | None = Field(None, description="Pixels; the model's native size if unset.")
    scheduler: Annotated[str, Strict()] | None = Field(
        None, description="Sampler short name or diffusers class name; the model's own if unset."
    )
    batch: Int = Field(1, description="Images to make from the prompt, in one batched call.")
    deadline: Number | None = Field(
        None, description="Seconds after which the job is stopped between two steps."
    )
    model: Annotated[str, Strict()] | None = Field(
        None, description="Which of the server's models draws; its first if unset."
    )
    loras: dict[str, Number] | None = Field(
        None, description="LoRAs of the server's --lora-dir by name, with their weights."
    )
    # SDXL (and SD 3), with diffusers' names and meanings; refused by other models.
    prompt_2: Annotated[str, Strict()] | None = Field(
        None, description="SDXL, SD 3: the second text encoder's prompt; the prompt if unset."
    )
    negative_prompt_2: Annotated[str, Strict()] | None = Field(
        None, description="SDXL, SD 3: the second text encoder's negative prompt."
    )
    # SD 3, with diffusers' names and meanings; refused by other models.
    prompt_3: Annotated[str, Strict()] | None = Field(
        None, description="SD 3: T5's prompt (the third text encoder); the prompt if unset."
    )
    negative_prompt_3: Annotated[str, Strict()] | None = Field(
        None, description="SD 3: T5's negative prompt."
    )
    max_sequence_length: Annotated[int, Strict()] | None = Field(
        None, description="SD 3: T5's tokens, 1 to 512; 256 if unset."
    )
    skip_guidance_layers: list[Annotated[int, Strict()]] | None = Field(
        None,
        description="SD 3: skip-layer guidance over these transformer layers (SD 3.5 Medium: "
        "[7, 8, 9]), from 1% to 20% of the steps at scale 2.8, as diffusers' defaults.",
    )
    original_size: Pair | None = Field(None, description="SDXL: [height, width] conditioning.")
    crops_coords_top_left: Pair | None = Field(None, description="SDXL: [top, left] conditioning.")
    target_size: Pair | None = Field(None, description="SDXL: [height, width] conditioning.")
    aesthetic_score: Number | None = Field(None, description="SDXL refiners: 6 if unset.")
    refiner: Annotated[str, Strict()] | None = Field(
        None, description="SDXL: a refiner model of this server finishes the image."
    )
    refiner_switch_at: Number | None = Field(
        None, description="SDXL: the fraction of the steps the base model takes; 0.8 if unset."
    )
    negative_aesthetic_score: Number | None = Field(None, description="SDXL refiners: 2.5.")
    control: list[ControlUnitBody] | None = Field(
        None,
        description="ControlNets built with the model, one hint each; the size is the "
        "first hint's if unset.",
    )
    vae: Literal["full", "tiny"] = Field(
        "full",
        description="tiny: decode (and encode) with the tiny VAE built beside the model "
        "(`sdtrt build --tiny-vae`): faster, less detailed.",
    )
    guess_mode: Annotated[bool, Strict()] = Field(
        False, description="The ControlNets on the prompt's rows only, deep blocks weighted most."
    )


class Img2ImgRequest(Txt2ImgRequest):
    """Image to image, or inpainting with a mask: the `run` command's `--image`, `--mask`,
    `--strength` and `--padding-mask-crop`, images as base64 (or `data:` URLs)."""

    image: Annotated[str, Strict()] = Field(description="The image to start from, base64.")
    mask: Annotated[str, Strict()] | None = Field(
        None, description="White where to inpaint, base64; image to image without one."
    )
    strength: Number | None = Field(
        None, description="How much to change the image, (0, 1]; diffusers' default if unset."
    )
    padding_mask_crop: Int | None = Field(
        None, description="Inpaint the mask's surroundings (this margin in pixels) at full size."
    )


class Txt2ImgResponse(BaseModel):
    id: str
    images: list[str] = Field(description="Base64 PNGs with their settings in `parameters`.")
    seeds: list[int]
    parameters: list[str] = Field(description="Each image's settings, as in its PNG.")
    timings: dict[str, float] = Field(description="Seconds per stage.")


class JobAccepted(BaseModel):
    id: str
    state: str
    queue_position: int | None


class JobStatus(BaseModel):
    id: str
    state: str
    step: int
    steps: int
    queue_position: int | None
    error: str | None
    result: Txt2ImgResponse | None = None


class SizeInfo(BaseModel):
    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]
    step: int
    native: tuple[int, int]


class ServiceInfo(BaseModel):
    model: str
    models: list[str] = Field(description="Every model this server serves, the default first.")
    sizes: SizeInfo
    max_batch: int
    schedulers: list[str]
    default_scheduler: str
    max_steps: int
    max_prompt_chars: int
    workers: int
    queue: int
