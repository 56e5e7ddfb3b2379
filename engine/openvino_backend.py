"""OpenVINO backend: the exported ONNX compiled for a device, the compiled model kept on disk.

The build reads the exported graph, bounds its dynamic axes to the build's profile, compiles it
with the precision asked for, and exports the compiled model (`engine.blob`); a load imports
that blob instead of compiling again (reading and transforming the SD 1.5 UNet's graph takes
minutes on a small CPU).

Shapes stay dynamic within the build's range: one blob serves every size. A model compiled for
one static shape runs faster (SD 1.5's UNet at 256x256, batch 2, bf16: 437 ms against 474 ms;
its VAE decoder 2 %): `--static` builds (one size) add a blob compiled for the optimum batch
(`engine.static.blob`), which calls of that shape run on; other batches take the main blob,
imported on first use. A network whose every shape the build fixes (an NPU's, or the VAE
decoder of one image) has the main blob alone: it is already the static one.

A compiled model is specific to the OpenVINO release, the device and, on the CPU, the
instruction sets it was compiled for (bfloat16 kernels need avx512_bf16 or amx_bf16). The
settings record all three; a load on a machine that lacks any of them asks for a rebuild, and
`target()` puts them in the build key so that the rebuild compiles afresh.

Precisions: fp32 pins OpenVINO's inference precision to f32 (its CPU default is bf16 where the
CPU has it); bf16 asks for bfloat16 compute; int8 compresses the weights to int8 with NNCF
(activations stay fp32); w8a8 quantizes weights and activations, calibrated on the inputs the
build passes (engine/openvino_quantize.py), and computes the rest in bf16 where the CPU has it.

The same on Intel GPUs and NPUs: engine/openvino_devices.py.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import queue
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.onnxruntime_backend import cpu_flags
from sdtrt.engine.openvino_quantize import compress_weights, quantize
from sdtrt.engine.options import BuildOptions, GraphStyle, Precision
from sdtrt.engine.tensors import ComponentIO, Feeds
from sdtrt.errors import (
    ArtifactError,
    BackendUnavailable,
    EngineIncompatible,
    InputError,
    first_line,
)

log = logging.getLogger(__name__)

ENGINE_NAME = "engine.blob"
STATIC_NAME = "engine.static.blob"  # --static builds: every input at its optimum shape
CPU = "CPU"
GPU = "GPU"
NPU = "NPU"
# OpenVINO's names for the inference precision hint (w8a8's depends on the CPU: inference_hint).
HINTS = {
    Precision.FP32: "f32", Precision.FP16: "f16", Precision.BF16: "bf16", Precision.INT8: "f32"
}  # fmt: skip
# CPU flags that decide which kernels OpenVINO compiles: vector widths, and the bf16 and int8
# dot-product instructions. A compiled model may use any of those present where it was built.
ISA_FLAGS = (
    "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Without these, OpenVINO's int8 kernels emulate the dot products (w8a8 still runs, slower).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _ov() -> ModuleType:
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(
            "openvino is not installed; run `pip install 'sdtrt[openvino]'`"
        ) from None
    return openvino


@functools.cache
def shared_core() -> Any:
    """One OpenVINO Core per process: it loads the device plugins once, and is thread-safe."""
    return _ov().Core()


def isa_features(flags: Iterable[str]) -> list[str]:
    """The flags among `flags` that a compiled model may depend on, sorted."""
    return sorted(set(flags) & set(ISA_FLAGS))


def precision_problem(precision: Precision, flags: set[str]) -> str | None:
    """Why this CPU cannot compute in `precision`, or None where it can."""
    if precision is Precision.FP16:
        return (
            "OpenVINO on the CPU computes in fp32, bf16 or with int8 weights, not fp16; "
            "use --precision bf16 (or fp32)"
        )
    if precision is Precision.BF16 and not flags & set(BF16_FLAGS):
        return (
            "this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16), so OpenVINO would "
            "quietly compute in fp32; build with --precision fp32 (or int8)"
        )
    return None


def float_precision(flags: set[str]) -> Precision:
    """The fastest floating-point precision this CPU computes in: w8a8 builds compute what they
    leave unquantized in it."""
    return Precision.BF16 if flags & set(BF16_FLAGS) else Precision.FP32


def inference_hint(precision: Precision, flags: set[str]) -> str:
    """OpenVINO's inference precision for `precision` on a CPU with `flags`."""
    if precision is Precision.W8A8:
        return HINTS[float_precision(flags)]
    return HINTS[precision]


def missing_features(recorded: Iterable[str], flags: set[str]) -> list[str]:
    """The recorded features this CPU lacks."""
    return sorted(set(recorded) - flags)


def bounded_shapes(io: ComponentIO) -> dict[str, list[tuple[int, int]]]:
    """Per input, (min, max) per axis from the build profile: fixed where min equals max."""
    return {
        name: [(lo, hi) for lo, hi in zip(shape.min, shape.max, strict=True)]
        for name, shape in io.profile.items()
    }


def _partial_shape(ov: ModuleType, bounds: list[tuple[int, int]]) -> Any:
    return ov.PartialShape([lo if lo == hi else ov.Dimension(lo, hi) for lo, hi in bounds])


class OpenVinoBackend:
    """OpenVINO on the CPU."""

    name = "openvino"
    graph_style = GraphStyle()  # no ONNX Runtime contrib ops in OpenVINO
    device = CPU
    fixed_shapes = False

    def version(self) -> str:
        """OpenVINO's version; BackendUnavailable where it is not installed or sees no CPU."""
        ov = _ov()
        devices = shared_core().available_devices
        if self.device not in devices:
            raise BackendUnavailable(
                f"OpenVINO sees no {self.device} device (it sees {', '.join(devices) or 'none'})"
            )
        return str(ov.get_version()).split("-")[0]

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
        ov = _ov()
        precision = options.precision
        self.check_build(options)
        core = shared_core()
        model = core.read_model(str(onnx_path))
        bounds = bounded_shapes(io)
        model.reshape({name: _partial_shape(ov, b) for name, b in bounds.items()})
        if precision is Precision.INT8:
            model = compress_weights(model)
        if precision is Precision.W8A8:
            model = quantize(model, calibration)
        quantized = precision in (Precision.INT8, Precision.W8A8)
        settings: dict[str, Any] = {
            "device": self.device,
            "openvino_version": self.version(),
            "inference_precision": self.inference_hint(precision),
            "weights": "int8" if quantized else "fp32",
            "cpu_features": self.features(),
        }
        if precision is Precision.W8A8:
            settings["activations"] = "int8"
        config = compile_config(settings)
        _export(core.compile_model(model, self.device, config), ENGINE_NAME, out_dir)
        fixed = all(lo == hi for axes in bounds.values() for lo, hi in axes)
        if options.static and not fixed:  # fixed already: the model above is the static one
            optimum = {name: list(shape.opt) for name, shape in io.profile.items()}
            model.reshape({name: ov.PartialShape(shape) for name, shape in optimum.items()})
            _export(core.compile_model(model, self.device, config), STATIC_NAME, out_dir)
            settings.update(static_engine=STATIC_NAME, static_shapes=optimum)
        return ENGINE_NAME, settings

    def load(
        self, name: str, path: Path, portable: Path, io: ComponentIO, settings: Mapping[str, Any]
    ) -> Engine:
        check_compatible(path, settings, self.version(), cpu_flags())
        return OpenVinoEngine(name, path, io, settings)


def _export(compiled: Any, name: str, folder: Path) -> None:
    """Write a compiled model to `folder`/`name`; the caller holds no other reference to it, so
    that it is freed before the next compile."""
    with open(folder / name, "wb") as blob:
        blob.write(compiled.export_model().getbuffer())


def compile_config(settings: Mapping[str, Any]) -> dict[str, str]:
    """OpenVINO's compile (and import) properties for an engine with `settings`."""
    return {
        "INFERENCE_PRECISION_HINT": str(settings["inference_precision"]),
        # One request at a time, using every core: a denoising loop is a chain of single calls.
        "PERFORMANCE_HINT": "LATENCY",
    }


def check_compatible(
    path: Path, settings: Mapping[str, Any], version: str, flags: set[str]
) -> None:
    """Before a load: the compiled model at `path` suits this OpenVINO and this CPU."""
    built_with = settings.get("openvino_version")
    if built_with != version:
        raise EngineIncompatible(
            f"{path} was compiled by OpenVINO {built_with}, this is OpenVINO {version}; "
            "rebuild the engines here with `sdtrt build`"
        )
    missing = missing_features(settings.get("cpu_features", []), flags)
    if missing:
        raise EngineIncompatible(
            f"{path} was compiled for a CPU with {', '.join(missing)}, which this CPU lacks; "
            "rebuild the engines here with `sdtrt build`"
        )


def compile_with_weights(
    onnx_path: Path, io: ComponentIO, settings: Mapping[str, Any], weights: Mapping[str, np.ndarray]
) -> Any:
    """The exported graph compiled as the build compiled it, with `weights` in place of the
    initializers of those names (LoRA switching): int8 engines have the new weights compressed
    again. Compiling (and compressing) again is the switch's cost. w8a8 engines are refused:
    their activation scales were calibrated for the built weights."""
    if settings.get("activations") == "int8":
        raise InputError(
            f"{onnx_path.parent.name} has int8 activations calibrated for its built weights; "
            "merge LoRAs into a w8a8 build with `sdtrt build --lora` instead"
        )
    ov = _ov()
    model = shared_core().read_model(str(onnx_path))
    constants = {op.get_friendly_name(): op for op in model.get_ops()
                 if op.get_type_name() == "Constant"}  # fmt: skip
    missing = sorted(set(weights) - set(constants))
    if missing:
        raise ArtifactError(f"{onnx_path} lacks weights {', '.join(missing[:3])}; rebuild")
    for name, value in weights.items():
        replacement = ov.opset13.constant(np.ascontiguousarray(value))
        replacement.set_friendly_name(name)
        constants[name].output(0).replace(replacement.output(0))
    model.reshape({name: _partial_shape(ov, b) for name, b in bounded_shapes(io).items()})
    if settings.get("weights") == "int8":
        model = compress_weights(model)
    return shared_core().compile_model(
        model, str(settings.get("device", CPU)), compile_config(settings)
    )


class _Imported:
    """One compiled model and its pool of infer requests. An infer request serves one call at
    a time, so concurrent calls each take one (made on demand, kept for reuse)."""

    def __init__(self, compiled: Any, blob: np.memmap | None = None) -> None:
        self.compiled = compiled
        self.blob = blob  # the mapped file the imported model's weights lie in
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @classmethod
    def load(cls, path: Path, settings: Mapping[str, Any]) -> _Imported:
        try:
            # Imported from a memory map: OpenVINO keeps the weights where they lie instead of
            # copying them, so the map must outlive the compiled model (see close). Copy-on-
            # write because OpenVINO asks for writable memory; nothing is written back.
            blob = np.memmap(path, dtype=np.uint8, mode="c")
            compiled = shared_core().import_model(
                _ov().Tensor(blob, shared_memory=True),
                str(settings.get("device", CPU)),
                compile_config(settings),
            )
        except (OSError, RuntimeError, ValueError) as error:
            raise ArtifactError(
                f"{path} could not be loaded ({first_line(error)}); rebuild the engines with "
                "`sdtrt build`"
            ) from None
        return cls(compiled, blob)

    def infer(self, feeds: Mapping[str, np.ndarray], output_names: list[str]) -> dict[str, Any]:
        try:
            request = self.requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # Inputs are only read; the returned arrays are copies the request does not reuse.
            results = request.infer(dict(feeds), share_inputs=True, share_outputs=False)
            return {name: results[name] for name in output_names}
        finally:
            self.requests.put(request)


class OpenVinoEngine(Engine):
    """A compiled OpenVINO model behind the Engine interface; with a `--static` build, calls at
    the optimum shapes run on the static blob and the main one is imported on first need.
    `compiled` gives an already compiled model (LoRA switching) in place of the blobs."""

    def __init__(
        self,
        name: str,
        path: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        compiled: Any = None,
    ) -> None:
        super().__init__(name, io)
        self._output_names = [t.name for t in io.outputs]
        self._path, self._settings = path, settings
        self._main: _Imported | None = None
        self._static: _Imported | None = None
        self._static_shapes: dict[str, tuple[int, ...]] = {}
        self._importing = threading.Lock()
        if compiled is not None:
            self._main = _Imported(compiled)
        elif settings.get("static_engine"):
            self._static = _Imported.load(path.parent / settings["static_engine"], settings)
            self._static_shapes = {
                k: tuple(v) for k, v in settings.get("static_shapes", {}).items()
            }
        else:
            self._main = _Imported.load(path, settings)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        static = self._static is not None and all(
            feeds[name].shape == shape for name, shape in self._static_shapes.items()
        )
        if static:
            assert self._static is not None
            return self._static.infer(feeds, self._output_names)
        return self._main_model().infer(feeds, self._output_names)

    def _main_model(self) -> _Imported:
        with self._importing:
            if self._main is None:
                self._main = _Imported.load(self._path, self._settings)
            return self._main

    def close(self) -> None:
        # The compiled models first: they read their mapped blobs until released.
        self._main = self._static = None
