"""The text-to-image pipeline over built engines: diffusers' call signature, numpy inside.

Everything a call needs (scheduler state, noise generator, timings) lives in that call, so one
Pipeline serves concurrent requests from several threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from PIL import Image

from sdtrt.engine.backends import load_component
from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import Manifest, read_manifest
from sdtrt.errors import ArtifactError, InputError
from sdtrt.runtime.images import postprocess, to_pil
from sdtrt.runtime.noise import NoiseSource, make_noise
from sdtrt.runtime.request import Request, make_request
from sdtrt.runtime.schedulers import create_scheduler
from sdtrt.runtime.tokenizer import PromptTokenizer

REQUIRED_COMPONENTS = ("text_encoder", "unet", "vae_decoder")

# Called after each UNet step with (step index, number of steps).
StepCallback = Callable[[int, int], None]


@dataclass
class Timings:
    """Seconds spent per stage of one call."""

    tokenize: float = 0.0
    text_encoder: float = 0.0
    unet: list[float] = field(default_factory=list)  # one entry per model call
    scheduler: list[float] = field(default_factory=list)  # guidance + scheduler step, per call
    vae_decoder: float = 0.0
    total: float = 0.0


@dataclass
class GenerationOutput:
    images: list[Image.Image] | np.ndarray
    request: Request
    timings: Timings


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


class Pipeline:
    """Stable Diffusion text-to-image over an engine directory written by `sdtrt build`."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        engines: dict[str, Engine],
        tokenizer: PromptTokenizer,
        scheduler_config: dict[str, Any],
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.engines = engines
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config

    @classmethod
    def load(cls, directory: str | Path, backend: str | None = None) -> Pipeline:
        """Open an engine directory; `backend`, when given, must be the one it was built for."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        config_path = directory / manifest.scheduler_config
        try:
            scheduler_config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ArtifactError(
                f"{config_path} cannot be read ({error}); rebuild the engines"
            ) from None
        tokenizer = PromptTokenizer(directory / manifest.tokenizer)
        engines: dict[str, Engine] = {}
        try:
            for name in REQUIRED_COMPONENTS:
                engines[name] = _load_engine(directory, manifest, name, backend)
        except BaseException:
            for engine in engines.values():
                engine.close()
            raise
        return cls(directory, manifest, engines, tokenizer, scheduler_config)

    @property
    def default_scheduler(self) -> str:
        return str(self.scheduler_config.get("_class_name", "PNDMScheduler"))

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
    ) -> GenerationOutput:
        """Generate images. `latents` is the initial noise, exactly as diffusers' `latents=`.

        With `noise="torch"` (the default) a seed draws exactly the noise that diffusers draws
        from `torch.Generator("cpu").manual_seed(seed)`, so both make the same image;
        `noise="numpy"` uses numpy's own generator instead.
        """
        started = time.perf_counter()
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
        )
        timings = Timings()
        source = make_noise(request.noise, request.seed)
        context = self._encode(request, timings)
        latents = self._initial_latents(request, latents, source)
        latents = self._denoise(request, context, latents, source, timings, step_callback)
        mark = time.perf_counter()
        model = self.manifest.model
        decoded = self.engines["vae_decoder"].infer(
            {"latent": latents / np.float32(model.vae_scaling_factor)}
        )["image"]
        images = postprocess(decoded)
        timings.vae_decoder = time.perf_counter() - mark
        timings.total = time.perf_counter() - started
        return GenerationOutput(
            images=to_pil(images) if output_type == "pil" else images,
            request=request,
            timings=timings,
        )

    def _encode(self, request: Request, timings: Timings) -> np.ndarray:
        """Text states for the UNet: negatives then prompts when guided, one row per image."""
        mark = time.perf_counter()
        texts = request.negative_prompts + request.prompts if request.guided else request.prompts
        ids = self.tokenizer(texts)
        timings.tokenize = time.perf_counter() - mark
        mark = time.perf_counter()
        states = self.engines["text_encoder"].infer({"input_ids": ids})["last_hidden_state"]
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
        return latents.astype(np.float32)

    def _denoise(
        self,
        request: Request,
        context: np.ndarray,
        latents: np.ndarray,
        source: NoiseSource,
        timings: Timings,
        step_callback: StepCallback | None,
    ) -> np.ndarray:
        scheduler = create_scheduler(request.scheduler, self.scheduler_config)
        plan = scheduler.plan(request.steps)
        timesteps = scheduler.timesteps(plan)
        state = scheduler.initial_state(plan)
        latents = latents * np.float32(scheduler.init_noise_sigma(plan))
        unet = self.engines["unet"]
        guidance = np.float32(request.guidance_scale)
        rows = 2 if request.guided else 1
        # Reused across steps: every allocation after an engine call costs tens of microseconds
        # (the engine has just evicted the allocator's and interpreter's working set).
        model_input = np.empty((rows * latents.shape[0], *latents.shape[1:]), dtype=np.float32)
        timestep = np.empty((model_input.shape[0],), dtype=np.float32)
        for i, t in enumerate(timesteps):
            mark = time.perf_counter()
            scaled = scheduler.scale_model_input(latents, i, plan)
            for half in np.split(model_input, rows):
                np.copyto(half, scaled)
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
            timings.unet.append(unet_done - unet_started)
            timings.scheduler.append(time.perf_counter() - mark - (unet_done - unet_started))
            if step_callback is not None:
                step_callback(i, len(timesteps))
        return latents

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
