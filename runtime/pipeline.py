"""The text-to-image pipeline over built engines: diffusers' call signature, numpy inside.

Everything a call needs (scheduler state, noise generator, timings) lives in that call, so one
Pipeline serves concurrent requests from several threads.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from PIL import Image

from sdtrt.engine.backends import load_component
from sdtrt.engine.base import Engine
from sdtrt.engine.lora import LORA_COMPONENTS, LoraSource, as_lora_source
from sdtrt.engine.lora_switch import load_with_initializers, lora_initializers
from sdtrt.engine.manifest import Manifest, read_manifest
from sdtrt.errors import ArtifactError, InputError
from sdtrt.runtime.conditioning import TextConditioner
from sdtrt.runtime.image_input import ImageInput
from sdtrt.runtime.image_tasks import load_inputs, make_image_task, output_size
from sdtrt.runtime.images import postprocess, to_pil
from sdtrt.runtime.noise import NoiseSource, make_noise
from sdtrt.runtime.numerics import check_image, check_step, is_finite
from sdtrt.runtime.request import Request, make_request
from sdtrt.runtime.schedulers import create_scheduler
from sdtrt.runtime.tasks import Task
from sdtrt.runtime.tokenizer import PromptTokenizer

REQUIRED_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
# Opened on the first call that takes an image, so that text to image never pays for it.
ENCODER = "vae_encoder"

# Called after each UNet step with (step index, number of steps). What it raises ends the call
# there and reaches the caller unchanged (the service cancels jobs this way).
StepCallback = Callable[[int, int], None]


@dataclass
class Timings:
    """Seconds spent per stage of one call."""

    tokenize: float = 0.0
    text_encoder: float = 0.0
    unet: list[float] = field(default_factory=list)  # one entry per model call
    scheduler: list[float] = field(default_factory=list)  # guidance + scheduler step, per call
    vae_decoder: float = 0.0
    image_encode: float = 0.0  # preparing and VAE-encoding the input image and mask
    total: float = 0.0


@dataclass
class GenerationOutput:
    images: list[Image.Image] | np.ndarray
    request: Request
    timings: Timings
    strength: float | None = None  # of an input image; None for text to image


def _load_engine(directory: Path, manifest: Manifest, name: str, backend: str | None) -> Engine:
    record = manifest.components.get(name)
    if record is None:
        raise ArtifactError(f"{directory} has no {name} engine; rebuild it with `sdtrt build`")
    if backend is not None and backend != record.backend:
        raise ArtifactError(
            f"{directory} holds {record.backend} engines, not {backend}; "
            f"rebuild with `sdtrt build --backend {backend}`"
        )
    return load_component(directory, record)


def read_scheduler_config(directory: Path, manifest: Manifest) -> dict[str, Any]:
    """The scheduler config an engine directory was built with."""
    path = directory / manifest.scheduler_config
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} cannot be read ({error}); rebuild the engines") from None


def default_scheduler(scheduler_config: Mapping[str, Any]) -> str:
    """The diffusers class the model's own scheduler config names."""
    return str(scheduler_config.get("_class_name", "PNDMScheduler"))


class Pipeline:
    """Stable Diffusion over an engine directory written by `sdtrt build`: text to image, and
    image to image and inpainting where the directory has a VAE encoder."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        engines: dict[str, Engine],
        tokenizer: PromptTokenizer,
        scheduler_config: dict[str, Any],
        backend: str | None = None,
    ) -> None:
        self.directory = directory
        self.backend = backend  # what load() was asked for, for the engines opened later
        self.manifest = manifest
        self.engines = engines
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config
        self.loras: tuple[LoraSource, ...] = ()  # applied on top of the built weights
        self.conditioner = TextConditioner(
            engines["text_encoder"], tokenizer, manifest.ranges.max_prompt_chunks
        )
        self._opening = threading.Lock()

    @classmethod
    def load(cls, directory: str | Path, backend: str | None = None) -> Pipeline:
        """Open an engine directory; `backend`, when given, must be the one it was built for."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        scheduler_config = read_scheduler_config(directory, manifest)
        tokenizer = PromptTokenizer(directory / manifest.tokenizer)
        engines: dict[str, Engine] = {}
        try:
            for name in REQUIRED_COMPONENTS:
                engines[name] = _load_engine(directory, manifest, name, backend)
        except BaseException:
            for engine in engines.values():
                engine.close()
            raise
        return cls(directory, manifest, engines, tokenizer, scheduler_config, backend)

    @property
    def default_scheduler(self) -> str:
        return default_scheduler(self.scheduler_config)

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        scheduler: str | None = None,
        num_images_per_prompt: int = 1,
        output_type: Literal["pil", "np"] = "pil",
        noise: str = "torch",
        step_callback: StepCallback | None = None,
        prompt_syntax: str = "diffusers",
        clip_skip: int | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float | None = None,
    ) -> GenerationOutput:
        """Generate images. `latents` is the initial noise, exactly as diffusers' `latents=`.

        With `noise="torch"` (the default) a seed draws exactly the noise that diffusers draws
        from `torch.Generator("cpu").manual_seed(seed)`, so both make the same image;
        `noise="numpy"` uses numpy's own generator instead. `prompt_syntax="a1111"` reads
        prompts in the A1111 web UI's syntax, weights and prompts beyond 77 tokens included;
        `clip_skip` is diffusers' (see runtime/conditioning.py).
        """
        started = time.perf_counter()
        inputs = load_inputs(image, mask_image, strength, self.engines["unet"])
        height, width = output_size(inputs, self.manifest, height, width)
        if output_type not in ("pil", "np"):
            raise InputError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        request = make_request(
            self.manifest,
            self.default_scheduler,
            prompt,
            negative_prompt,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            seed,
            scheduler,
            num_images_per_prompt,
            noise,
            prompt_syntax=prompt_syntax,
            clip_skip=clip_skip,
        )
        self.conditioner.check_clip_skip(request.clip_skip)
        timings = Timings()
        source = make_noise(request.noise, request.seed)
        context = self._encode(request, timings)
        if inputs is None:
            task = Task(self._initial_latents(request, latents, source))
        else:
            mark = time.perf_counter()
            given = latents
            task = make_image_task(
                inputs, request, self.manifest, self._with_encoder(), source, strength,
                lambda: self._initial_latents(request, given, source), given is not None,
            )  # fmt: skip
            timings.image_encode = time.perf_counter() - mark
        latents = self._denoise(request, context, task, source, timings, step_callback)
        mark = time.perf_counter()
        model = self.manifest.model
        decoded = self.engines["vae_decoder"].infer(
            {"latent": latents / np.float32(model.vae_scaling_factor)}
        )["image"]
        check_image(decoded, self.manifest)  # never a black PNG from an fp16 overflow
        images = postprocess(decoded)
        timings.vae_decoder = time.perf_counter() - mark
        timings.total = time.perf_counter() - started
        return GenerationOutput(
            images=to_pil(images) if output_type == "pil" else images,
            request=request,
            timings=timings,
            strength=task.strength,
        )

    def _encode(self, request: Request, timings: Timings) -> np.ndarray:
        """Text states for the UNet: negatives then prompts when guided, one row per image."""
        mark = time.perf_counter()
        texts = request.negative_prompts + request.prompts if request.guided else request.prompts
        chunks = self.conditioner.tokenize(texts, request.prompt_syntax)
        timings.tokenize = time.perf_counter() - mark
        mark = time.perf_counter()
        states = self.conditioner.encode(
            chunks, request.prompt_syntax, request.clip_skip, len(request.prompts)
        )
        timings.text_encoder = time.perf_counter() - mark
        context = np.repeat(states, request.images_per_prompt, axis=0)
        context.setflags(write=False)  # the same every step: GPU engines keep it on the device
        return context

    def _initial_latents(
        self, request: Request, latents: np.ndarray | None, source: NoiseSource
    ) -> np.ndarray:
        model = self.manifest.model
        f = model.vae_scale_factor
        shape = (request.batch, model.latent_channels, request.height // f, request.width // f)
        if latents is None:
            return source.randn(shape)
        latents = np.asarray(latents)
        if latents.shape != shape:
            raise InputError(
                f"latents must have shape {shape} for this request, got {latents.shape}"
            )
        if not is_finite(latents):
            raise InputError("latents hold NaN or infinity; pass finite initial noise")
        return latents.astype(np.float32)

    def _denoise(
        self,
        request: Request,
        context: np.ndarray,
        task: Task,
        source: NoiseSource,
        timings: Timings,
        step_callback: StepCallback | None,
    ) -> np.ndarray:
        scheduler = create_scheduler(request.scheduler, self.scheduler_config)
        begins = task.start(scheduler, scheduler.plan(request.steps))
        plan, latents = begins.plan, begins.latents
        timesteps = scheduler.timesteps(plan)
        state = scheduler.initial_state(plan)
        unet = self.engines["unet"]
        guidance = np.float32(request.guidance_scale)
        rows = 2 if request.guided else 1
        # Reused across steps: every allocation after an engine call costs tens of microseconds
        # (the engine has just evicted the allocator's and interpreter's working set).
        channels = latents.shape[1]
        extra = task.unet_extra  # constant over the loop: written once, after the latents
        total = channels if extra is None else channels + extra.shape[1]
        model_input = np.empty((rows * latents.shape[0], total, *latents.shape[2:]), np.float32)
        if extra is not None:
            for half in np.split(model_input, rows):
                np.copyto(half[:, channels:], extra)
        timestep = np.empty((model_input.shape[0],), dtype=np.float32)
        for i in range(begins.begin, len(timesteps)):
            t = timesteps[i]
            mark = time.perf_counter()
            scaled = scheduler.scale_model_input(latents, i, plan)
            for half in np.split(model_input, rows):
                np.copyto(half[:, :channels], scaled)
            timestep.fill(t)
            unet_started = time.perf_counter()
            prediction = unet.infer(
                {"sample": model_input, "timestep": timestep, "encoder_hidden_states": context}
            )["noise_pred"]
            unet_done = time.perf_counter()
            if request.guided:
                # unconditional + guidance * (conditional - unconditional), in one new array:
                # schedulers keep past outputs, so this must not be a reused buffer.
                unconditional, conditional = np.split(prediction, 2)
                prediction = np.subtract(conditional, unconditional)
                prediction *= guidance
                prediction += unconditional
            latents, state = scheduler.step(prediction, i, latents, plan, state, source.randn)
            latents = task.blend(latents, scheduler, plan, i)
            check_step(latents, i, len(timesteps), self.manifest)
            timings.unet.append(unet_done - unet_started)
            timings.scheduler.append(time.perf_counter() - mark - (unet_done - unet_started))
            if step_callback is not None:
                step_callback(i - begins.begin, len(timesteps) - begins.begin)
        return latents

    def _with_encoder(self) -> dict[str, Engine]:
        """The engines, the VAE encoder among them where the directory has one."""
        with self._opening:
            if ENCODER not in self.engines and ENCODER in self.manifest.components:
                self.engines[ENCODER] = _load_engine(
                    self.directory, self.manifest, ENCODER, self.backend
                )
        return self.engines

    def set_loras(
        self, loras: Sequence[LoraSource | str | Path | tuple[str | Path, float]]
    ) -> None:
        """Re-weight the text encoder and UNet with `loras` (files, `(file, scale)` pairs or
        LoraSource), in place of any set before; `[]` restores the built weights. The engines
        are replaced between calls: do not switch while another thread generates."""
        sources = tuple(as_lora_source(item) for item in loras)
        records = self.manifest.components
        weights = lora_initializers(self.directory, records, sources) if sources else {}
        fresh: dict[str, Engine] = {}
        try:
            for name in LORA_COMPONENTS:
                fresh[name] = load_with_initializers(
                    self.directory, records[name], weights.get(name, {})
                )
        except BaseException:
            for engine in fresh.values():
                engine.close()
            raise
        for name, engine in fresh.items():
            self.engines[name].close()
            self.engines[name] = engine
        self.conditioner.encoder = self.engines["text_encoder"]
        self.loras = sources

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
