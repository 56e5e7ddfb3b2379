"""`sdtrt bench`: per-stage latency of the sdtrt pipeline over repeated runs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from sdtrt.bench.machine import gpus, machine_info, peak_rss_mib
from sdtrt.bench.stats import Latency
from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import GenerationOutput, Pipeline

# What `sdtrt run` imports before it does any work.
IMPORT_PROBE = (
    "import time; t = time.perf_counter(); "
    "import sdtrt.cli, sdtrt.runtime.pipeline, onnxruntime; "
    "print(time.perf_counter() - t)"
)


class BenchOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt: str = "a photo of an astronaut riding a horse on mars"
    steps: int = 30
    height: int | None = None
    width: int | None = None
    batch: int = 1
    guidance: float = 7.5
    scheduler: str | None = None
    warmup: int = 1
    runs: int = 5
    seed: int = 0
    # A ControlNet of the engines to run at every step, with a hint made up here.
    controlnet: str | None = None

    def check(self) -> None:
        if self.runs < 1 or self.warmup < 0:
            raise InputError(
                f"--runs must be >= 1 and --warmup >= 0, got {self.runs}, {self.warmup}"
            )

    def call_arguments(self) -> dict[str, Any]:
        """The pipeline call these options describe, diffusers-style."""
        return {
            "prompt": self.prompt,
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "scheduler": self.scheduler,
            "num_images_per_prompt": self.batch,
            "seed": self.seed,
            "output_type": "np",
        }


class BenchReport(BaseModel):
    machine: dict[str, Any]
    model: dict[str, Any]
    options: BenchOptions
    height: int
    width: int
    scheduler: str
    unet_calls: int
    import_seconds: float | None
    load_seconds: float
    stages: dict[str, Latency]
    images_per_second: float
    peak_rss_mib: float
    gpus_loaded: list[dict[str, Any]]  # GPU memory in use with the engines loaded


def measure_import_seconds() -> float | None:
    """Seconds `sdtrt run` spends importing, measured in a fresh interpreter."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return round(float(done.stdout.strip()), 3)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def stage_latencies(results: list[GenerationOutput]) -> dict[str, Latency]:
    """Per-stage summaries; per-step stages pool every step of every run (the ControlNets',
    where they ran)."""
    timings = [r.timings for r in results]
    stages = {
        "tokenize": Latency.of([t.tokenize for t in timings]),
        "text_encoder": Latency.of([t.text_encoder for t in timings]),
        "unet_step": Latency.of([s for t in timings for s in t.unet]),
        "host_step": Latency.of([s for t in timings for s in t.scheduler]),
        "vae_decoder": Latency.of([t.vae_decoder for t in timings]),
        "end_to_end": Latency.of([t.total for t in timings]),
    }
    if any(r.controls is not None for r in results):
        stages["controlnet_step"] = Latency.of([s for t in timings for s in t.controlnet])
    return stages


def hint_image(height: int, width: int) -> Image.Image:
    """A made-up ControlNet hint: white lines on black, as an edge map is."""
    y, x = np.mgrid[0:height, 0:width]
    lines = (x % 32 < 2) | (y % 48 < 2) | ((x + y) % 64 < 2)
    return Image.fromarray((lines * 255).astype(np.uint8)).convert("RGB")


def run_bench(
    directory: Path, options: BenchOptions, progress: Callable[[str], None] = lambda _: None
) -> BenchReport:
    options.check()
    imports = measure_import_seconds()
    started = time.perf_counter()
    pipe = Pipeline.load(directory)
    load_seconds = time.perf_counter() - started
    with pipe:
        arguments = options.call_arguments()
        if options.controlnet is not None:
            native = pipe.manifest.model.native_size
            size = (options.height or native[0], options.width or native[1])
            arguments.update(controlnet=options.controlnet, control_image=hint_image(*size))
        for i in range(options.warmup):
            progress(f"warm-up {i + 1}/{options.warmup}")
            pipe(**arguments)
        results = []
        for i in range(options.runs):
            progress(f"run {i + 1}/{options.runs}")
            results.append(pipe(**arguments))
        manifest = pipe.manifest
        gpus_loaded = gpus()  # while the engines still hold their memory
    stages = stage_latencies(results)
    request = results[0].request
    return BenchReport(
        machine=machine_info(),
        model={
            "name": manifest.model.name,
            "family": manifest.model.family,
            "source": manifest.source.ref,
        },
        options=options,
        height=request.height,
        width=request.width,
        scheduler=request.scheduler,
        unet_calls=len(results[0].timings.unet),
        import_seconds=imports,
        load_seconds=round(load_seconds, 3),
        stages=stages,
        images_per_second=round(request.batch / (stages["end_to_end"].p50_ms / 1e3), 4),
        peak_rss_mib=peak_rss_mib(),
        gpus_loaded=gpus_loaded,
    )
