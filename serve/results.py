"""A finished job's result: its images as PNGs that carry their infotexts, and the seconds it
spent per stage, summed over its pipeline calls."""

from __future__ import annotations

import numpy as np

from sdtrt.runtime.pipeline import GenerationOutput
from sdtrt.runtime.timings import Timings
from sdtrt.serve.encoding import infotext, png_bytes
from sdtrt.serve.jobs import JobResult


def stage_seconds(t: Timings) -> dict[str, float]:
    """Seconds per stage of one pipeline call, by the names the service reports."""
    return {
        "tokenize": t.tokenize,
        "text_encoder": t.text_encoder,
        "unet": sum(t.unet),
        "scheduler": sum(t.scheduler),
        **({"controlnet": sum(t.controlnet)} if t.controlnet else {}),  # engines that have one
        "vae_decoder": t.vae_decoder,
        "pipeline": t.total,
    }


def job_result(outputs: list[GenerationOutput], model: str, timings: dict[str, float]) -> JobResult:
    """The result of a job whose calls gave `outputs`; adds their stages to `timings`."""
    pngs, seeds, texts, latents = [], [], [], []
    for output in outputs:
        request = output.request
        if isinstance(output.images, np.ndarray):  # latents, handed on to a refiner
            latents.append(output.images)
            seeds += [request.seed] * len(output.images)
        for index, image in enumerate(output.images if isinstance(output.images, list) else []):
            text = infotext(request, model, index, output.controls)
            pngs.append(png_bytes(image, text))  # type: ignore[arg-type]
            seeds.append(request.seed)
            texts.append(text)
        for stage, seconds in stage_seconds(output.timings).items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    return JobResult(pngs=pngs, seeds=seeds, infotexts=texts, timings=timings, latents=latents)
