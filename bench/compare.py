"""The side-by-side harness: one model, size, step count and scheduler through sdtrt and through
the references (references.py: diffusers in torch eager and compiled, in a process of its own
(torch_process.py), and, beside CPU engines, OpenVINO and ONNX Runtime on the same exported UNet
graph), rounds interleaved, reported as ratios. Every row names the precision it computes in;
CUDA engines meet torch on the same GPU.

A ratio measured in one run, with the contenders taking turns, holds on a noisy machine where
absolute timings drift between runs. sdtrt's engine takes turns with torch's, then with each
graph reference in turn, loaded for its own rounds alone: the comparison holds one reference's
copy of the weights at a time beside sdtrt's and torch's. Where diffusers cannot be held
beside sdtrt's engines (SDXL on 24 GiB), each side takes its turns alone instead: sdtrt's,
diffusers', then the graph references'. The references need the diffusers model folder (the
export extra brings torch and diffusers); OpenVINO is optional.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from sdtrt.bench.machine import machine_info, peak_rss_mib
from sdtrt.bench.references import Clocked, Loader, clocked, graph_references, torch_target
from sdtrt.bench.runner import BenchOptions
from sdtrt.bench.stats import Latency
from sdtrt.bench.torch_process import TorchProcess
from sdtrt.engine.backends import get_backend
from sdtrt.engine.manifest import ComponentRecord, Manifest
from sdtrt.engine.options import Precision
from sdtrt.engine.residuals import is_residual
from sdtrt.errors import InputError
from sdtrt.export.memory import EXPORT_ACTIVATIONS, LIBRARIES_BYTES, fp32_bytes_on_disk
from sdtrt.runtime.controlnet import zero_residuals
from sdtrt.runtime.guidance import guidance_embedding
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.runtime.schedulers import resolve_scheduler_name
from sdtrt.runtime.skip_guidance import LAYER_MASK


class CompareReport(BaseModel):
    machine: dict[str, Any]
    model_folder: str
    options: BenchOptions
    height: int
    width: int
    scheduler: str
    sdtrt: str  # sdtrt's row: "sdtrt <backend> <precision>"
    # Per contender, named with the precision it computes in: one UNet call on the guided batch.
    unet_step: dict[str, Latency]
    end_to_end: dict[str, Latency]  # sdtrt and diffusers, whole image
    host_step_us: float  # sdtrt's own per-step work around the engine calls (p50)
    speedups: dict[str, float]  # reference p50 / sdtrt p50
    peak_rss_mib: float
    # False where diffusers could not be loaded beside sdtrt's engines: sdtrt's turns came
    # first, the references' after, and the ratios hold less well on a drifting machine.
    interleaved: bool = True


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


log = logging.getLogger(__name__)


def _interleave(contenders: dict[str, Clocked], runs: int) -> dict[str, list[float]]:
    """Each contender once to warm up, then `runs` rounds in which each takes one turn: the
    seconds of each turn."""
    for run in contenders.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, run in contenders.items():
            seconds[name].append(run())
    return seconds


def _unet_rounds(
    resident: dict[str, Clocked],
    ours: str,
    loaders: list[Loader],
    runs: int,
    progress: Callable[[str], None],
    loader_bytes: int = 0,
) -> dict[str, Latency]:
    """sdtrt's engine (`ours`, in `resident`) in turns with the resident references, then with
    each loaded one in turn; sdtrt's turns of every group together make its row. A loaded
    reference that would need more than the memory free (`loader_bytes` each) is left out,
    with a line: a comparison killed for memory shows nothing."""
    import psutil

    seconds = _interleave(resident, runs)
    seconds.setdefault(ours, [])
    for load in loaders:
        free = psutil.virtual_memory().available
        if loader_bytes > 0.9 * free:
            log.warning(
                "left out the CPU runtimes on the same graph: each needs about %.1f GiB, "
                "%.1f GiB is free beside sdtrt's engines and torch's",
                loader_bytes / 2**30,
                free / 2**30,
            )
            break
        label, run = load()
        progress(f"timing UNet steps beside {label}")
        ours_too = {ours: resident[ours]} if ours in resident else {}  # not in separate turns
        group = _interleave({**ours_too, label: run}, runs)
        del run  # the reference's session or compiled model goes before the next one loads
        seconds[ours] += group.get(ours, [])
        seconds[label] = group[label]
    return {name: Latency.of(values) for name, values in seconds.items() if values}


def _unet_feeds(pipe: Pipeline, height: int, width: int, batch: int) -> dict[str, np.ndarray]:
    """A guided denoiser call's inputs (one row per image where the UNet embeds the guidance):
    the latents, one timestep, text states, and SDXL's pooled prompt and size numbers or SD 3's
    pooled prompts and layer mask."""
    model, rng = pipe.manifest.model, np.random.default_rng(0)
    f = model.vae_scale_factor
    rows = batch if model.guidance_embedding_dim is not None else 2 * batch
    io = pipe.engines[pipe.family.denoiser].io
    # One prompt's worth of text states: the smallest the build accepts beyond the batch.
    context = io.profile["encoder_hidden_states"].min
    feeds = {
        "sample": rng.standard_normal(
            (rows, model.latent_channels, height // f, width // f), dtype=np.float32
        ),
        "timestep": np.full((rows,), 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal(
            (rows, int(context[1]), int(context[2])), dtype=np.float32
        ),
    }
    residuals = [spec for spec in io.inputs if is_residual(spec.name)]
    feeds.update(zero_residuals(residuals, model, rows, height, width))  # built for ControlNets
    for spec in io.inputs[3:]:
        if is_residual(spec.name):
            continue
        if spec.name == LAYER_MASK:  # SD 3: every layer runs
            feeds[spec.name] = np.ones((int(spec.shape[0]),), np.float32)
            continue
        width_of = int(spec.shape[1])
        if spec.name == "time_ids":
            ids = [height, width, 0, 0, *([height, width] if width_of == 6 else [6.0])]
            feeds[spec.name] = np.tile(np.asarray(ids, np.float32), (rows, 1))
        elif spec.name == "timestep_cond":
            feeds[spec.name] = guidance_embedding(np.full((rows,), 8.5), width_of)
        else:
            feeds[spec.name] = rng.standard_normal((rows, width_of), dtype=np.float32)
    return feeds


def _diffusers_bytes(folder: str, dropped: list[str], device: str) -> int:
    """What diffusers' fp32 pipeline from `folder` holds in this machine's memory: its weights,
    torch's activations (a third of them, as a build's export takes) and the libraries. 0 where
    that is not this machine's memory to bound (torch's weights in GPU memory) or cannot be
    read (a hub id)."""
    path = Path(folder)
    if device != "cpu" or not (path / "model_index.json").is_file():
        return 0
    parts = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer", "vae")
    present = [p for p in parts if p not in dropped and (path / p).is_dir()]
    weights = sum(fp32_bytes_on_disk(path / part) for part in present)
    return int(LIBRARIES_BYTES + (1 + EXPORT_ACTIVATIONS) * weights)


def _check_diffusers_fits(need: int) -> None:
    """Refuse a comparison whose diffusers side cannot fit in this machine's memory at all."""
    import psutil

    total = psutil.virtual_memory().total
    if need > 0.9 * total:
        raise InputError(
            f"--compare runs diffusers' fp32 pipeline, which needs about {need / 2**30:.0f} GiB; "
            f"this machine has {total / 2**30:.0f} GiB. Run `sdtrt bench` without --compare, or "
            "compare engines built without a network diffusers can drop (SD 3's T5)"
        )


def _fits_beside(need: int) -> bool:
    """Whether diffusers' side (`need` bytes) fits in the memory free beside sdtrt's engines,
    warmed; where it does not, a line says that the two sides take their turns apart."""
    import psutil

    free = psutil.virtual_memory().available
    if need < 0.9 * free:
        return True
    log.warning(
        "diffusers needs about %.0f GiB beside sdtrt's engines, %.0f GiB is free: sdtrt's turns "
        "come first, and the references' once its engines are let go (the ratios then come from "
        "separate turns, not rounds)",
        need / 2**30,
        free / 2**30,
    )
    return False


def _graph_bytes(directory: Path, record: ComponentRecord) -> int:
    """What a CPU runtime holds of the exported graph's weights: two fp32 copies as it compiles
    and runs them (OpenVINO's fp32 compile measured 2.1 copies; SDXL's UNet graph, 9.6 GiB in
    fp32, held 14.2 GiB), of weights a bf16 build stores in fp16."""
    onnx = directory / record.onnx
    files = [onnx, *onnx.parent.glob(onnx.name + "*.data"), *onnx.parent.glob("*.data")]
    on_disk = sum(path.stat().st_size for path in set(files) if path.is_file())
    return 2 * on_disk * (2 if record.precision is Precision.BF16 else 1)


def engine_label(manifest: Manifest, component: str = "unet") -> str:
    """sdtrt's row: its backend and the precision the network was built in."""
    record = manifest.components[component]
    return f"sdtrt {record.backend} {record.precision.value}"


def _unet_contenders(
    record: ComponentRecord,
    torch_process: TorchProcess,
    feeds: dict[str, np.ndarray],
    directory: Path,
    torch_compile: bool,
    progress: Callable[[str], None],
) -> tuple[dict[str, Clocked], list[Loader]]:
    """The references' UNet calls: torch's (eager, compiled), loaded now; and beside CPU
    engines the CPU runtimes on the same graph (`record`'s), to be loaded one at a time (beside
    CUDA engines they would compare a GPU with a CPU, and onnxruntime-cuda's graph has CUDA-only
    kernels)."""
    target = torch_process.target
    resident = {target.label("torch eager"): torch_process.unet(feeds)}
    if torch_compile:
        progress("compiling the UNet with torch.compile")
        compiled = torch_process.compiled_unet(feeds)
        if compiled is not None:
            resident[target.label("torch.compile")] = compiled
    loaders: list[Loader] = []
    if target.device == "cpu":
        onnxruntime = get_backend(record.backend).library != "onnxruntime"
        loaders = graph_references(directory / record.onnx, feeds, onnxruntime)
    return resident, loaders


def compare(
    directory: Path,
    options: BenchOptions,
    model: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
    torch_compile: bool = True,
) -> CompareReport:
    """sdtrt's engines against the references (see references.py), rounds interleaved; where
    diffusers cannot be loaded beside sdtrt's engines, sdtrt's turns first and then, with its
    engines let go, the references'."""
    options.check()
    unet_seconds: dict[str, list[float]] = {}
    image_seconds: dict[str, list[float]] = {}
    host: list[float] = []
    with Pipeline.load(directory) as pipe:
        folder = model_folder(pipe.manifest, model)
        height, width = (
            options.height or pipe.manifest.model.native_size[0],
            options.width or pipe.manifest.model.native_size[1],
        )
        scheduler = resolve_scheduler_name(options.scheduler or pipe.default_scheduler)
        feeds = _unet_feeds(pipe, height, width, options.batch)
        denoiser = pipe.family.denoiser
        ours_label = engine_label(pipe.manifest, denoiser)
        record = pipe.manifest.components[denoiser]
        target = torch_target(record.backend, record.precision)
        diffusers_label = target.label("diffusers torch eager")
        # Text encoders the engines were built without (SD 3's T5), which diffusers then
        # runs without too: both make the same image.
        dropped = [e for e in pipe.family.t5_encoders if e not in pipe.manifest.components]
        dropped += [e.replace("text_encoder", "tokenizer") for e in dropped]
        arguments = {**options.call_arguments(), "height": height, "width": width}
        arguments["scheduler"] = scheduler
        engine = pipe.engines[denoiser]
        our_unet = clocked(lambda: engine.infer(feeds))

        def ours() -> object:
            result = pipe(**arguments)
            host.extend(result.timings.scheduler)
            return result

        need = _diffusers_bytes(folder, dropped, target.device)
        _check_diffusers_fits(need)
        our_unet()  # the engines hold their memory once they have run
        separate = not _fits_beside(need)
        if not separate:
            progress("loading diffusers")
            with TorchProcess(folder, scheduler, target, tuple(dropped)) as torch_process:
                resident, loaders = _unet_contenders(
                    record, torch_process, feeds, directory, torch_compile, progress
                )
                progress("timing UNet steps")
                unet_step = _unet_rounds(
                    {ours_label: our_unet, **resident},
                    ours_label,
                    loaders,
                    options.runs,
                    progress,
                    _graph_bytes(directory, record),
                )
                del resident, loaders
                progress("timing whole images")
                contenders = {
                    ours_label: clocked(ours),
                    diffusers_label: torch_process.image(options, height, width),
                }
                image_seconds = _interleave(contenders, options.runs)
        else:
            progress("timing sdtrt's UNet steps and images")
            unet_seconds = _interleave({ours_label: our_unet}, options.runs)
            image_seconds = _interleave({ours_label: clocked(ours)}, options.runs)
    if separate:
        progress("loading diffusers, sdtrt's engines let go")
        with TorchProcess(folder, scheduler, target, tuple(dropped)) as torch_process:
            resident, loaders = _unet_contenders(
                record, torch_process, feeds, directory, torch_compile, progress
            )
            progress("timing diffusers' UNet steps")
            unet_seconds.update(_interleave(resident, options.runs))
            del resident
            progress("timing diffusers' images")
            image = torch_process.image(options, height, width)
            image_seconds.update(_interleave({diffusers_label: image}, options.runs))
        # The runtimes on the same graph once torch's process is gone too, each on its own.
        graph = _graph_bytes(directory, record)
        alone = _unet_rounds({}, ours_label, loaders, options.runs, progress, graph)
        unet_step = {name: Latency.of(values) for name, values in unet_seconds.items()}
        unet_step.update(alone)
    end_to_end = {name: Latency.of(values) for name, values in image_seconds.items()}
    speedups = {
        f"unet vs {name}": round(v.p50_ms / unet_step[ours_label].p50_ms, 3)
        for name, v in unet_step.items()
        if name != ours_label
    }
    speedups[f"image vs {diffusers_label}"] = round(
        end_to_end[diffusers_label].p50_ms / end_to_end[ours_label].p50_ms, 3
    )
    return CompareReport(
        machine=machine_info(),
        model_folder=folder,
        options=options,
        height=height,
        width=width,
        scheduler=scheduler,
        sdtrt=ours_label,
        unet_step=unet_step,
        end_to_end=end_to_end,
        host_step_us=round(float(np.median(host)) * 1e6, 1),
        speedups=speedups,
        peak_rss_mib=peak_rss_mib(),
        interleaved=not separate,
    )
