"""The side-by-side harness: one model, size, step count and scheduler through sdtrt and through
the references — diffusers (torch eager) and, where installed, OpenVINO on the same exported
UNet graph — in one process, rounds interleaved, reported as ratios.

A ratio measured in one run, with the contenders taking turns, holds on a noisy machine where
absolute timings drift between runs. The references need the diffusers model folder (the
export extra brings torch and diffusers); OpenVINO is optional.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from sdtrt.bench.machine import machine_info, peak_rss_mib
from sdtrt.bench.runner import BenchOptions
from sdtrt.bench.stats import Latency
from sdtrt.engine.manifest import Manifest
from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.runtime.schedulers import SCHEDULERS, resolve_scheduler_name

Timed = Callable[[], object]


class CompareReport(BaseModel):
    machine: dict[str, Any]
    model_folder: str
    options: BenchOptions
    height: int
    width: int
    scheduler: str
    unet_step: dict[str, Latency]  # per contender, one UNet call on the guided batch
    end_to_end: dict[str, Latency]  # sdtrt and diffusers, whole image
    host_step_us: float  # sdtrt's own per-step work around the engine calls (p50)
    speedups: dict[str, float]  # reference p50 / sdtrt p50
    peak_rss_mib: float


def model_folder(manifest: Manifest, given: Path | None) -> str:
    """Where the references load the model: --model, or the folder or hub id it was built from."""
    if given is not None:
        if not (given / "model_index.json").is_file():
            raise InputError(f"{given} is not a diffusers model folder (no model_index.json)")
        return str(given)
    source = manifest.source
    if source.kind == "folder" and (Path(source.ref) / "model_index.json").is_file():
        return source.ref
    if source.kind == "hub":
        return source.ref
    raise InputError(
        f"these engines were built from {source.kind} '{source.ref}', which the reference cannot "
        "load; pass --model with its diffusers folder (for a preset: `sdtrt preset NAME DIR`)"
    )


def _interleave(contenders: dict[str, Timed], runs: int) -> dict[str, Latency]:
    """Each contender once to warm up, then `runs` rounds in which each takes one turn."""
    for run in contenders.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return {name: Latency.of(values) for name, values in seconds.items()}


def _unet_feeds(pipe: Pipeline, height: int, width: int, batch: int) -> dict[str, np.ndarray]:
    """A guided UNet call's inputs: the latents twice, one timestep, text states."""
    model, rng = pipe.manifest.model, np.random.default_rng(0)
    f = model.vae_scale_factor
    rows = 2 * batch
    context = pipe.engines["unet"].io.input("encoder_hidden_states").shape
    return {
        "sample": rng.standard_normal(
            (rows, model.latent_channels, height // f, width // f), dtype=np.float32
        ),
        "timestep": np.full((rows,), 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal(
            (rows, int(context[1]), int(context[2])), dtype=np.float32
        ),
    }


def _torch_contenders(
    folder: str,
    options: BenchOptions,
    feeds: dict[str, np.ndarray],
    height: int,
    width: int,
    scheduler: str,
) -> tuple[Timed, Timed]:
    import diffusers
    import torch

    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    choice = SCHEDULERS[scheduler]
    cls = getattr(diffusers, choice.cls.diffusers_name)
    reference.scheduler = cls.from_config({**reference.scheduler.config, **choice.overrides})
    tensors = {name: torch.from_numpy(array) for name, array in feeds.items()}

    def unet() -> object:
        with torch.inference_mode():
            return reference.unet(
                tensors["sample"], tensors["timestep"], tensors["encoder_hidden_states"]
            )

    def image() -> object:
        with torch.inference_mode():
            return reference(
                options.prompt, height=height, width=width, num_inference_steps=options.steps,
                guidance_scale=options.guidance, num_images_per_prompt=options.batch,
                generator=torch.Generator("cpu").manual_seed(options.seed), output_type="np",
            )  # fmt: skip

    return unet, image


def _openvino_unet(onnx_path: Path, feeds: dict[str, np.ndarray]) -> Timed | None:
    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino

    core = openvino.Core()
    graph = core.read_model(str(onnx_path))
    graph.reshape({name: list(array.shape) for name, array in feeds.items()})
    request = core.compile_model(graph, "CPU").create_infer_request()
    return lambda: request.infer(feeds)


def compare(
    directory: Path, options: BenchOptions, model: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CompareReport:  # fmt: skip
    options.check()
    with Pipeline.load(directory) as pipe:
        folder = model_folder(pipe.manifest, model)
        height, width = (
            options.height or pipe.manifest.model.native_size[0],
            options.width or pipe.manifest.model.native_size[1],
        )
        scheduler = resolve_scheduler_name(options.scheduler or pipe.default_scheduler)
        feeds = _unet_feeds(pipe, height, width, options.batch)
        progress("loading diffusers")
        torch_unet, torch_image = _torch_contenders(
            folder, options, feeds, height, width, scheduler
        )
        engine = pipe.engines["unet"]
        unets: dict[str, Timed] = {"sdtrt": lambda: engine.infer(feeds), "torch eager": torch_unet}
        progress("loading OpenVINO")
        openvino = _openvino_unet(directory / pipe.manifest.components["unet"].onnx, feeds)
        if openvino is not None:
            unets["openvino"] = openvino
        progress("timing UNet steps")
        unet_step = _interleave(unets, options.runs)
        arguments = {
            **options.call_arguments(),
            "height": height,
            "width": width,
            "scheduler": scheduler,
        }
        host: list[float] = []

        def ours() -> object:
            result = pipe(**arguments)
            host.extend(result.timings.scheduler)
            return result

        progress("timing whole images")
        end_to_end = _interleave({"sdtrt": ours, "diffusers": torch_image}, options.runs)
    speedups = {
        f"unet vs {name}": round(v.p50_ms / unet_step["sdtrt"].p50_ms, 3)
        for name, v in unet_step.items()
        if name != "sdtrt"
    }
    speedups["image vs diffusers"] = round(
        end_to_end["diffusers"].p50_ms / end_to_end["sdtrt"].p50_ms, 3
    )
    return CompareReport(
        machine=machine_info(),
        model_folder=folder,
        options=options,
        height=height,
        width=width,
        scheduler=scheduler,
        unet_step=unet_step,
        end_to_end=end_to_end,
        host_step_us=round(float(np.median(host)) * 1e6, 1),
        speedups=speedups,
        peak_rss_mib=peak_rss_mib(),
    )
