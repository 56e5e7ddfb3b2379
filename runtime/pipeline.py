"""The text-to-image pipeline over built engines: diffusers' call signature, numpy inside.

Everything a call needs (scheduler state, noise generator, timings) lives in that call, so one
Pipeline serves concurrent requests from several threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from PIL import Image

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import Manifest, read_manifest
from sdtrt.engine.weights.lora import LoraSource, as_lora_source, lora_components
from sdtrt.engine.weights.switch import load_with_initializers, lora_initializers
from sdtrt.errors import InputError
from sdtrt.runtime.arguments import make_request
from sdtrt.runtime.controlnet import control_run, make_controls
from sdtrt.runtime.engine_directory import (
    default_scheduler,
    load_engine,
    load_tokenizers,
    read_scheduler_config,
)
from sdtrt.runtime.families import family_of
from sdtrt.runtime.loop import StepCallback, denoise
from sdtrt.runtime.noise import make_noise
from sdtrt.runtime.numerics import check_image
from sdtrt.runtime.postprocess import postprocess, to_pil
from sdtrt.runtime.preprocess import ImageInput
from sdtrt.runtime.prompt_encoder import PromptEncoder
from sdtrt.runtime.request import Controls, GenerationOutput, Request, SizeConditioning
from sdtrt.runtime.skip_guidance import SkipLayerGuidance, skip_layers
from sdtrt.runtime.t5 import T5PromptTokenizer
from sdtrt.runtime.task_setup import (
    ImageInputs,
    TaskSetup,
    initial_latents,
    load_inputs,
    make_image_task,
    output_size,
)
from sdtrt.runtime.tasks import Task, check_fraction
from sdtrt.runtime.textual_inversion import read_embedding
from sdtrt.runtime.timings import Timings
from sdtrt.runtime.tokenizer import PromptTokenizer
from sdtrt.runtime.vae import DECODERS, ENCODERS, decoder_latents

DECODER = DECODERS["full"]  # needed with the text encoders and the denoiser by most calls


class Pipeline:
    """Stable Diffusion over an engine directory written by `sdtrt build`: text to image, and
    image to image and inpainting where the directory has a VAE encoder."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        engines: dict[str, Engine],
        tokenizers: dict[str, PromptTokenizer | T5PromptTokenizer],
        scheduler_config: dict[str, Any],
        backend: str | None = None,
    ) -> None:
        """`tokenizers`: each text encoder's, by component name (see Manifest.text_encoders)."""
        self.directory = directory
        self.backend = backend  # what load() was asked for, for the engines opened later
        self.manifest = manifest
        self.family = family_of(manifest.model)
        self.engines = engines
        self.scheduler_config = scheduler_config
        self.loras: tuple[LoraSource, ...] = ()  # applied on top of the built weights
        self.prompt_encoder = PromptEncoder(
            engines, tokenizers, manifest.model, manifest.ranges.max_prompt_chunks
        )
        self._opening = threading.Lock()

    @classmethod
    def load(cls, directory: str | Path, backend: str | None = None) -> Pipeline:
        """Open an engine directory; `backend`, when given, must be the one it was built for."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        scheduler_config = read_scheduler_config(directory, manifest)
        family = family_of(manifest.model)
        tokenizers = load_tokenizers(directory, manifest)
        engines: dict[str, Engine] = {}
        try:
            for name in (*tokenizers, family.denoiser, DECODER):
                engines[name] = load_engine(directory, manifest, name, backend)
        except BaseException:
            for engine in engines.values():
                engine.close()
            raise
        return cls(directory, manifest, engines, tokenizers, scheduler_config, backend)

    @property
    def default_scheduler(self) -> str:
        return default_scheduler(self.scheduler_config)

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        scheduler: str | None = None,
        num_images_per_prompt: int = 1,
        output_type: Literal["pil", "np", "latent"] = "pil",
        noise: str = "torch",
        step_callback: StepCallback | None = None,
        prompt_syntax: str = "diffusers",
        clip_skip: int | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float | None = None,
        prompt_2: str | Sequence[str] | None = None,
        negative_prompt_2: str | Sequence[str] | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
        aesthetic_score: float | None = None,
        negative_aesthetic_score: float | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        padding_mask_crop: int | None = None,
        prompt_3: str | Sequence[str] | None = None,
        negative_prompt_3: str | Sequence[str] | None = None,
        max_sequence_length: int | None = None,
        skip_guidance_layers: Sequence[int] | None = None,
        skip_layer_guidance_scale: float = 2.8,
        skip_layer_guidance_start: float = 0.01,
        skip_layer_guidance_stop: float = 0.2,
        vae: str = "full",
        control_image: ImageInput | Sequence[ImageInput] | None = None,
        controlnet: str | Sequence[str] | None = None,
        controlnet_conditioning_scale: float | Sequence[float] | None = None,
        control_guidance_start: float | Sequence[float] | None = None,
        control_guidance_end: float | Sequence[float] | None = None,
        guess_mode: bool = False,
    ) -> GenerationOutput:
        """Generate images. `latents` is the initial noise, exactly as diffusers' `latents=`.
        Steps and guidance default to those of diffusers' pipeline for the model (50 steps;
        guidance 7.5, SDXL 5; latent consistency models 4 steps at 8.5).

        With `noise="torch"` (the default) a seed draws exactly the noise that diffusers draws
        from `torch.Generator("cpu").manual_seed(seed)`, so both make the same image;
        `noise="numpy"` uses numpy's own generator instead. `prompt_syntax="a1111"` reads
        prompts in the A1111 web UI's syntax, weights and prompts beyond 77 tokens included;
        `clip_skip` is diffusers' (see runtime/conditioning.py). SDXL models also take
        StableDiffusionXLPipeline's `prompt_2`, `negative_prompt_2`, sizes and (refiners)
        aesthetic scores. SDXL's ensemble of experts: `denoising_end=0.8, output_type="latent"`
        on the base model, then `image=those latents, denoising_start=0.8` on the refiner.
        `padding_mask_crop=N` inpaints the mask's surroundings (N px of margin, grown to the
        output's aspect ratio) at the output size and pastes the result back into the image.
        SD 3 models take StableDiffusion3Pipeline's `prompt_2` and `prompt_3` (T5's),
        their negatives, `max_sequence_length` (T5's tokens, 256 unless given) and its
        skip-layer guidance (`skip_guidance_layers=[7, 8, 9]` and its scale, start and stop);
        their defaults are 28 steps at guidance 7.0 (image to image and inpainting: 50).
        `vae="tiny"` decodes (and encodes images) with the tiny VAE built beside the model's
        (`sdtrt build --tiny-vae`), as diffusers does with `pipe.vae = AutoencoderTiny(...)`.
        ControlNets (`sdtrt build --controlnet`) take diffusers' ControlNet pipelines'
        arguments (`control_image`: a hint per ControlNet; the size defaults to the first's),
        and `controlnet`: the names of those to use, every built one by default.
        """
        started = time.perf_counter()
        inputs = load_inputs(
            image,
            mask_image,
            strength,
            denoiser=self._denoiser.io,
            model=self.manifest.model,
            padding_mask_crop=padding_mask_crop,
        )
        if padding_mask_crop is not None and output_type != "pil":
            raise InputError("padding_mask_crop makes PIL images: leave output_type 'pil'")
        controls = make_controls(
            self.manifest.model,
            control_image,
            controlnet,
            controlnet_conditioning_scale,
            control_guidance_start,
            control_guidance_end,
            guess_mode,
            inputs,
        )
        if controls is not None:
            height, width = controls.size(height, width, self.manifest.model.vae_scale_factor)
        height, width = output_size(inputs, self.manifest, height, width)
        if output_type not in ("pil", "np", "latent"):
            raise InputError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")
        check_fraction(denoising_start, "denoising_start")
        check_fraction(denoising_end, "denoising_end")
        if denoising_start is not None and inputs is None:
            raise InputError("denoising_start continues from an image or latents: pass image=")
        request = make_request(
            self.manifest,
            self.default_scheduler,
            prompt,
            negative_prompt,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            scheduler=scheduler,
            num_images_per_prompt=num_images_per_prompt,
            noise=noise,
            prompt_syntax=prompt_syntax,
            clip_skip=clip_skip,
            prompt_2=prompt_2,
            negative_prompt_2=negative_prompt_2,
            task="txt2img" if inputs is None else inputs.kind,
            controlled=controls is not None,
            prompt_3=prompt_3,
            negative_prompt_3=negative_prompt_3,
            max_sequence_length=max_sequence_length,
            skip_layers=skip_layers(
                skip_guidance_layers,
                skip_layer_guidance_scale,
                skip_layer_guidance_start,
                skip_layer_guidance_stop,
            ),
            vae=vae,
            sizes=SizeConditioning.given(
                original_size=original_size,
                crops_coords_top_left=crops_coords_top_left,
                target_size=target_size,
                aesthetic_score=aesthetic_score,
                negative_aesthetic_score=negative_aesthetic_score,
            ),
        )
        return self.run(
            request,
            inputs,
            strength=strength,
            latents=latents,
            output_type=output_type,
            step_callback=step_callback,
            denoising_start=denoising_start,
            denoising_end=denoising_end,
            started=started,
            controls=controls,
        )

    def run(
        self,
        request: Request,
        inputs: ImageInputs | None = None,
        *,
        strength: float | None = None,
        latents: np.ndarray | None = None,
        output_type: Literal["pil", "np", "latent"] = "pil",
        step_callback: StepCallback | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        started: float | None = None,
        controls: Controls | None = None,
    ) -> GenerationOutput:
        """A call whose request is already made and checked (`make_request`, and `load_inputs`
        for its images; `make_controls` for its ControlNets): what the call above runs, and
        what a server that checked a request when it took it runs without building it again."""
        started = time.perf_counter() if started is None else started
        self.prompt_encoder.check(request)
        timings = Timings()
        source = make_noise(request.noise, request.seed)
        conditioning = self.prompt_encoder(request, timings)
        if inputs is None:
            task = Task(initial_latents(request, self.manifest.model, latents, source))
        else:
            mark = time.perf_counter()
            given = latents
            setup = TaskSetup(
                request=request,
                manifest=self.manifest,
                engines=self._opened(ENCODERS[request.vae]),
                source=source,
                draw_latents=lambda: initial_latents(request, self.manifest.model, given, source),
                latents_given=given is not None,
                controlled=controls is not None,
            )
            task = make_image_task(inputs, setup, strength, denoising_start)
            timings.image_encode = time.perf_counter() - mark
        latents = denoise(
            self._denoiser,
            request,
            conditioning,
            task,
            scheduler_config=self.scheduler_config,
            manifest=self.manifest,
            source=source,
            timings=timings,
            step_callback=step_callback,
            denoising_end=denoising_end,
            skip_guidance=(
                SkipLayerGuidance(request.skip_layers, conditioning, request.batch, request.steps)
                if request.skip_layers is not None and request.guided
                else None
            ),
            control=control_run(
                controls,
                self._denoiser,
                request,
                conditioning,
                self.manifest.model,
                lambda name: self._opened(name)[name],
            ),
        )
        if output_type == "latent":
            timings.total = time.perf_counter() - started
            return GenerationOutput(latents, request, timings, task.strength, controls)
        mark = time.perf_counter()
        decoder = DECODERS[request.vae]
        latents = decoder_latents(latents, self.manifest.model, request.vae)
        decoded = self._opened(decoder)[decoder].infer({"latent": latents})["image"]
        check_image(decoded, self.manifest, decoder)  # never a black PNG from an fp16 overflow
        images = postprocess(decoded)
        timings.vae_decoder = time.perf_counter() - mark
        output: list[Image.Image] | np.ndarray = images
        if output_type == "pil":
            output = to_pil(images)
            if task.finish is not None:
                output = [task.finish(image) for image in output]
        timings.total = time.perf_counter() - started
        return GenerationOutput(output, request, timings, task.strength, controls)

    @property
    def _denoiser(self) -> Engine:
        return self.engines[self.family.denoiser]

    def _opened(self, name: str) -> dict[str, Engine]:
        """The engines, `name` among them where the directory has it: the VAE encoders and the
        tiny VAE's decoder are opened on the first call that needs them, so that other calls
        never pay for them."""
        with self._opening:
            if name not in self.engines and name in self.manifest.components:
                self.engines[name] = load_engine(self.directory, self.manifest, name, self.backend)
        return self.engines

    def set_loras(
        self, loras: Sequence[LoraSource | str | Path | tuple[str | Path, float]]
    ) -> None:
        """Re-weight the text encoders and denoiser with `loras` (files, `(file, scale)` pairs
        or LoraSource), in place of any set before; `[]` restores the built weights. The
        engines are replaced between calls: do not switch while another thread generates."""
        sources = tuple(as_lora_source(item) for item in loras)
        if not self.family.switches_loras:
            raise InputError("LoRAs switch on SD 1.x, 2.x and SDXL engines; not on SD 3 yet")
        records = self.manifest.components
        weights = lora_initializers(self.directory, records, sources) if sources else {}
        fresh: dict[str, Engine] = {}
        try:
            for name in lora_components(records):
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
            if name in self.prompt_encoder.conditioners:
                self.prompt_encoder.conditioners[name].encoder = engine
        self.loras = sources

    def load_textual_inversion(
        self, path: str | Path, token: str | None = None, allow_pickle: bool = False
    ) -> None:
        """Add a textual-inversion embedding (.safetensors: diffusers' or the A1111 web UI's;
        .pt or .bin with `allow_pickle`) as the word `token`, else the file's own, as diffusers'
        method does; no rebuild. Not while another thread generates with this pipeline."""
        embedding = read_embedding(path, token, allow_pickle)
        self.prompt_encoder.add_embedding(embedding, Path(path).name)

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
