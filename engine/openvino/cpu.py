"""OpenVINO backend: the exported ONNX compiled for a device, the compiled model kept on disk.

The build reads the exported graph, bounds its dynamic axes to the build's profile, compiles it
with the precision asked for, and exports the compiled model (`engine.blob`); a load imports
that blob instead of compiling again (reading and transforming the SD 1.5 UNet's graph takes
minutes on a small CPU).

Shapes stay dynamic within the build's range: one blob serves every size. A model compiled for
one static shape runs faster (SD 1.5's UNet at 512x512, one guided image, bf16: 2.65 s against
3.68 s): builds add, for the networks over images and latents, a blob compiled for the optimum
shape (`engine.static.blob`; `--static` builds: their one size, `--max-batch` images), which
calls of that shape run on; other shapes take the main blob, imported on first use. A network
whose every shape the build fixes (an NPU's, or the VAE decoder of one image under --static) has
the main blob alone: it is already the static one.

A compiled model is specific to the OpenVINO release, the device and, on the CPU, the
instruction sets it was compiled for (bfloat16 kernels need avx512_bf16 or amx_bf16). The
settings record all three; a load on a machine that lacks any of them asks for a rebuild, and
`target()` puts them in the build key so that the rebuild compiles afresh.

Precisions: fp32 pins OpenVINO's inference precision to f32 (its CPU default is bf16 where the
CPU has it); bf16 asks for bfloat16 compute, its weights kept in fp16 as the export stores them
(compressed.py); int8 compresses the weights to int8 with NNCF
(activations stay fp32); w8a8 quantizes weights and activations, calibrated on the inputs the
build passes (quantize.py), and computes the rest in bf16 where the CPU has it.

The same on Intel GPUs and NPUs: devices.py; the engine itself: engine.py.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from sdtrt.engine.base import DeviceKind, Engine
from sdtrt.engine.graph_style import GraphStyle
from sdtrt.engine.host import cpu_flags, has_bf16, isa_features
from sdtrt.engine.openvino.compressed import read_keeping_fp16
from sdtrt.engine.openvino.engine import (
    CPU,
    ENGINE_NAME,
    STATIC_NAME,
    OpenVinoEngine,
    bounded_shapes,
    check_compatible,
    compile_config,
    compile_with_weights,
    export_compiled,
    ov,
    partial_shape,
    shared_core,
)
from sdtrt.engine.openvino.quantize import compress_weights, quantize
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.tensors import ComponentIO, Feeds
from sdtrt.errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)

# OpenVINO's names for the inference precision hint (w8a8's depends on the CPU: inference_hint).
HINTS = {
    Precision.FP32: "f32",
    Precision.FP16: "f16",
    Precision.BF16: "bf16",
    Precision.INT8: "f32",
}


def precision_problem(precision: Precision, flags: set[str]) -> str | None:
    """Why this CPU cannot compute in `precision`, or None where it can."""
    if precision is Precision.FP16:
        return (
            "OpenVINO on the CPU computes in fp32, bf16 or with int8 weights, not fp16; "
            "use --precision bf16 (or fp32)"
        )
    if precision is Precision.BF16 and not has_bf16(flags):
        return (
            "this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16), so OpenVINO would "
            "quietly compute in fp32; build with --precision fp32 (or int8)"
        )
    return None


def float_precision(flags: set[str]) -> Precision:
    """The fastest floating-point precision this CPU computes in: w8a8 builds compute what they
    leave unquantized in it."""
    return Precision.BF16 if has_bf16(flags) else Precision.FP32


def inference_hint(precision: Precision, flags: set[str]) -> str:
    """OpenVINO's inference precision for `precision` on a CPU with `flags`."""
    if precision is Precision.W8A8:
        return HINTS[float_precision(flags)]
    return HINTS[precision]


class OpenVinoBackend:
    """OpenVINO on the CPU."""

    name = "openvino"
    device_kind = DeviceKind.CPU
    library = "openvino"
    precisions = frozenset({Precision.FP32, Precision.BF16, Precision.INT8, Precision.W8A8})
    graph_style = GraphStyle()  # no ONNX Runtime contrib ops in OpenVINO
    device = CPU  # OpenVINO's name for the device its plugin compiles for
    fixed_shapes = False

    def version(self) -> str:
        """OpenVINO's version; BackendUnavailable where it is not installed or sees no CPU."""
        library = ov()
        devices = shared_core().available_devices
        if self.device not in devices:
            raise BackendUnavailable(
                f"OpenVINO sees no {self.device} device (it sees {', '.join(devices) or 'none'})"
            )
        return str(library.get_version()).split("-")[0]

    def float_precision(self) -> Precision:
        return float_precision(cpu_flags())

    def check_build(self, options: BuildOptions) -> None:
        """InputError (or BackendUnavailable), in one line, for a build this backend cannot
        make here: before any work, not after minutes of it."""
        self.check_precision(options.precision)
        quantized = options.precision in (Precision.INT8, Precision.W8A8)
        if quantized and importlib.util.find_spec("nncf") is None:
            raise BackendUnavailable(
                f"--precision {options.precision.value} needs NNCF; run `pip install nncf`"
            )

    def check_precision(self, precision: Precision) -> None:
        """InputError, in one line, where this machine cannot compute in `precision`."""
        problem = precision_problem(precision, cpu_flags())
        if problem is not None:
            raise InputError(problem)

    def inference_hint(self, precision: Precision) -> str:
        return inference_hint(precision, cpu_flags())

    def target(self) -> dict[str, str]:
        """What a compiled model is tied to: the device and the CPU's instruction sets."""
        return {"device": self.device, "cpu_features": ",".join(self.features())}

    def features(self) -> list[str]:
        """The CPU instruction sets a model compiled here may use."""
        return isa_features(cpu_flags())

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        io: ComponentIO,
        options: BuildOptions,
        cache_dir: Path,
        calibration: Feeds = (),
    ) -> tuple[str, dict[str, Any]]:
        """Compile `onnx_path` for the profile in `io` and export the compiled model; w8a8
        calibrates its activations on `calibration`."""
        precision = options.precision
        self.check_build(options)
        reading: AbstractContextManager[Any]
        if precision is Precision.BF16:  # its weights stored in fp16 stay so (compressed.py)
            reading = read_keeping_fp16(onnx_path, out_dir)
        else:
            reading = nullcontext(shared_core().read_model(str(onnx_path)))
        with reading as model:
            return self._compile(model, out_dir, io, options, calibration)

    def _compile(
        self, model: Any, out_dir: Path, io: ComponentIO, options: BuildOptions, calibration: Feeds
    ) -> tuple[str, dict[str, Any]]:
        library = ov()
        precision = options.precision
        core = shared_core()
        bounds = bounded_shapes(io)
        model.reshape({name: partial_shape(library, b) for name, b in bounds.items()})
        if precision is Precision.INT8:
            model = compress_weights(model)
        if precision is Precision.W8A8:
            model = quantize(model, calibration)
        quantized = precision in (Precision.INT8, Precision.W8A8)
        settings: dict[str, Any] = {
            "device": self.device,
            "openvino_version": self.version(),
            "inference_precision": self.inference_hint(precision),
            "weights": "int8" if quantized else "fp16" if precision is Precision.BF16 else "fp32",
            "cpu_features": self.features(),
        }
        if precision is Precision.W8A8:
            settings["activations"] = "int8"
        config = compile_config(settings)
        export_compiled(core.compile_model(model, self.device, config), ENGINE_NAME, out_dir)
        fixed = all(lo == hi for axes in bounds.values() for lo, hi in axes)
        # Fixed already: the model above is the static one.
        if not fixed and (options.static or self._compiles_optimum(io)):
            optimum = {name: list(shape.opt) for name, shape in io.profile.items()}
            model.reshape({name: library.PartialShape(shape) for name, shape in optimum.items()})
            export_compiled(core.compile_model(model, self.device, config), STATIC_NAME, out_dir)
            settings.update(static_engine=STATIC_NAME, static_shapes=optimum)
        return ENGINE_NAME, settings

    def _compiles_optimum(self, io: ComponentIO) -> bool:
        """Whether a build with shape ranges also compiles the network for its optimum shapes
        (one image at the optimum size), which calls of those shapes then run on: on the CPU,
        for the networks over images and latents, whose convolutions OpenVINO's dynamic-shape
        kernels run well behind its static ones (SD 1.5's UNet, bf16, 512x512, one guided
        image: 3.68 s a call dynamic, 2.65 s compiled for the shape; 2-core Intel Xeon with
        AMX, December 2026). Not the text encoders: little to gain, and T5-XXL's blob is 9 GB."""
        return self.device == CPU and any(len(t.shape) == 4 for t in io.inputs)

    def load(
        self,
        name: str,
        path: Path,
        portable: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> Engine:
        if weights:
            # The export compiled again as the build compiled it, with those constants
            # replaced (int8 engines: compressed again): a switch's cost is that compile, for
            # the optimum shapes where the build compiled those (the other ranges on need).
            recompile = functools.partial(compile_with_weights, portable, io, settings, weights)
            return OpenVinoEngine(name, path, io, settings, recompile)
        check_compatible(path, settings, self.version(), cpu_flags())
        return OpenVinoEngine(name, path, io, settings)
