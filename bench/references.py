"""What `sdtrt bench --compare` measures sdtrt against, each named by the precision it runs in.

- diffusers' UNet in torch, eager and (where inductor works here) under `torch.compile`: on the
  CPU in fp32 for CPU engines; on the GPU, in the engine's precision, for CUDA engines;
- the same exported UNet graph sdtrt built from, run by OpenVINO twice (its inference precision
  pinned to f32, and its own default, which is bf16 on CPUs with bfloat16 instructions) and by
  ONNX Runtime in fp32 with all its optimisations, so that every ratio is like for like.

The graph references run with static shapes at the benchmark's size, their best case.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdtrt.bench.runner import BenchOptions
from sdtrt.engine.backends import get_backend
from sdtrt.engine.base import DeviceKind
from sdtrt.engine.options import Precision
from sdtrt.runtime.schedulers import SCHEDULERS

Timed = Callable[[], object]
# A call that returns how long it took: measured by whoever runs it (see torch_process.py).
Clocked = Callable[[], float]
# OpenVINO's precision names, as the rows say them.
OV_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


@dataclass(frozen=True)
class TorchTarget:
    """Where and in what precision torch runs the references."""

    device: str  # "cpu" or "cuda"
    precision: Precision

    def label(self, runner: str) -> str:
        where = " (GPU)" if self.device == "cuda" else ""
        return f"{runner} {self.precision.value}{where}"


def torch_target(backend: str, precision: Precision) -> TorchTarget:
    """CUDA engines meet torch on the same GPU in their own float precision: a GPU engine against
    torch on the CPU would say nothing. CPU engines meet torch on the CPU in fp32, where torch's
    kernels are (its fp16 CPU kernels are few and slow)."""
    if get_backend(backend).device_kind is DeviceKind.NVIDIA_GPU:
        return TorchTarget("cuda", precision)
    return TorchTarget("cpu", Precision.FP32)


class TorchReference:
    """diffusers' pipeline for the model folder, with the benchmark's scheduler, on `target`."""

    def __init__(
        self, folder: str, scheduler: str, target: TorchTarget, dropped: tuple[str, ...] = ()
    ) -> None:
        """`dropped`: modules of the folder that sdtrt's engines were built without (SD 3's
        T5), which diffusers then runs without too."""
        import diffusers
        import torch

        # The class the folder's model_index.json names (SD, SDXL, LCM, ...), without the
        # safety checker of the classes that have one.
        index = diffusers.DiffusionPipeline.load_config(folder)  # a folder or a hub id
        unchecked = (
            {"safety_checker": None, "requires_safety_checker": False}
            if "safety_checker" in index
            else {}
        )
        # Safetensors only: a folder's pickled .bin weights could run code as they load.
        self.dtype = torch.float16 if target.precision is Precision.FP16 else torch.float32
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            folder,
            use_safetensors=True,
            dtype=self.dtype,  # not a bf16 folder's own, which would be cast afterwards
            **unchecked,
            **dict.fromkeys(dropped),
        )
        pipe.set_progress_bar_config(disable=True)
        choice = SCHEDULERS[scheduler]
        cls = getattr(diffusers, choice.cls.diffusers_name)
        pipe.scheduler = cls.from_config({**pipe.scheduler.config, **choice.overrides})
        if target.device == "cuda" and target.precision is Precision.FP32:
            # fp32 means fp32 here as in sdtrt's CUDA engines: no TF32 rounding.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.pipe = pipe.to(target.device, self.dtype)
        self.target = target

    def _finished(self, result: object) -> object:
        """Wait for the GPU's queued work, so that a timing covers the computation."""
        if self.target.device == "cuda":
            import torch

            torch.cuda.synchronize()
        return result

    def unet(self, feeds: dict[str, np.ndarray], compiled: bool = False) -> Timed:
        """One denoiser call (a UNet; SD 3's transformer); compiled with torch.compile
        (inductor) when asked, which compiles on the first call and raises there where it
        cannot work here."""
        import torch

        tensors = {
            name: torch.from_numpy(array).to(self.target.device, self.dtype)
            for name, array in feeds.items()
        }
        transformer = getattr(self.pipe, "transformer", None)
        if transformer is not None:
            return self._transformer(transformer, tensors, compiled)
        module: Any = torch.compile(self.pipe.unet) if compiled else self.pipe.unet
        added = {k: tensors[k] for k in ("text_embeds", "time_ids") if k in tensors}
        sample, timestep, context = (
            tensors[name] for name in ("sample", "timestep", "encoder_hidden_states")
        )

        def call() -> object:
            with torch.inference_mode():
                output = module(
                    sample,
                    timestep,
                    context,
                    timestep_cond=tensors.get("timestep_cond"),
                    added_cond_kwargs=added or None,
                )
                return self._finished(output)

        return call

    def _transformer(self, transformer: Any, tensors: dict[str, Any], compiled: bool) -> Timed:
        """SD 3's transformer call, every layer run (sdtrt's `layer_mask` of ones)."""
        import torch

        module: Any = torch.compile(transformer) if compiled else transformer

        def call() -> object:
            with torch.inference_mode():
                output = module(
                    hidden_states=tensors["sample"],
                    timestep=tensors["timestep"],
                    encoder_hidden_states=tensors["encoder_hidden_states"],
                    pooled_projections=tensors["pooled_projections"],
                )
                return self._finished(output)

        return call

    def image(self, options: BenchOptions, height: int, width: int) -> Timed:
        import torch

        def call() -> object:
            with torch.inference_mode():
                return self.pipe(
                    options.prompt,
                    height=height,
                    width=width,
                    num_inference_steps=options.steps,
                    guidance_scale=options.guidance,
                    num_images_per_prompt=options.batch,
                    generator=torch.Generator("cpu").manual_seed(options.seed),
                    output_type="np",
                )

        return call


# A reference loaded only for its own rounds (sdtrt's engine and torch's stay loaded
# throughout): it returns its row's label, which may depend on what the library chose, and the
# call. One at a time, a CPU comparison holds one graph reference's copy of the weights.
Loader = Callable[[], tuple[str, Clocked]]


def graph_references(
    onnx_path: Path, feeds: dict[str, np.ndarray], onnxruntime: bool
) -> list[Loader]:
    """OpenVINO on the exported graph (precision pinned to f32, and OpenVINO's own default),
    and, where `onnxruntime`, ONNX Runtime in fp32."""
    loaders: list[Loader] = []
    if importlib.util.find_spec("openvino") is not None:
        loaders += [functools.partial(_openvino, onnx_path, feeds, hint) for hint in ("f32", None)]
    if onnxruntime:
        loaders.append(functools.partial(_onnxruntime, onnx_path, feeds))
    return loaders


def _openvino(
    onnx_path: Path, feeds: dict[str, np.ndarray], hint: str | None
) -> tuple[str, Clocked]:
    """OpenVINO on the exported graph, with static shapes (its best case)."""
    import openvino

    core = openvino.Core()
    graph = core.read_model(str(onnx_path))
    graph.reshape({name: list(array.shape) for name, array in feeds.items()})
    config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    compiled = core.compile_model(graph, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
    del graph
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "bf16", "f32"
    precision = OV_PRECISIONS.get(chosen, chosen)
    label = f"openvino {precision}" + (" (pinned)" if hint else " (its default)")
    request = compiled.create_infer_request()
    return label, clocked(functools.partial(request.infer, feeds))


def _onnxruntime(onnx_path: Path, feeds: dict[str, np.ndarray]) -> tuple[str, Clocked]:
    """ONNX Runtime on the CPU in fp32, every optimisation on: sdtrt's own CPU path before
    OpenVINO, kept as the row the other CPU rows are measured against."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return "onnxruntime fp32 (same graph)", clocked(lambda: session.run(None, feeds))


def clocked(call: Timed) -> Clocked:
    """`call`, timed here."""

    def run() -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    return run
