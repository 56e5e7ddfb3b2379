"""A compiled OpenVINO model behind the Engine interface, and how OpenVINO compiles, exports and
imports one: the part of the OpenVINO backends that runs engines (the CPU's, the GPU's and the
NPU's alike)."""

from __future__ import annotations

import functools
import io
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.openvino.quantize import compress_weights
from sdtrt.engine.tensors import ComponentIO
from sdtrt.errors import (
    ArtifactError,
    BackendUnavailable,
    EngineIncompatible,
    InputError,
    first_line,
)

ENGINE_NAME = "engine.blob"
STATIC_NAME = "engine.static.blob"  # --static builds: every input at its optimum shape
CPU = "CPU"
GPU = "GPU"
NPU = "NPU"


def ov() -> ModuleType:
    try:
        import openvino
    except ImportError as error:
        raise BackendUnavailable(
            "openvino is not installed; run `pip install 'sdtrt[openvino]'`"
        ) from error
    return openvino


@functools.cache
def shared_core() -> Any:
    """One OpenVINO Core per process: it loads the device plugins once, and is thread-safe."""
    return ov().Core()


def missing_features(recorded: Iterable[str], flags: set[str]) -> list[str]:
    """The recorded features this CPU lacks."""
    return sorted(set(recorded) - flags)


def bounded_shapes(io: ComponentIO) -> dict[str, list[tuple[int, int]]]:
    """Per input, (min, max) per axis from the build profile: fixed where min equals max."""
    return {
        name: [(lo, hi) for lo, hi in zip(shape.min, shape.max, strict=True)]
        for name, shape in io.profile.items()
    }


def partial_shape(library: ModuleType, bounds: list[tuple[int, int]]) -> Any:
    return library.PartialShape(
        [lo if lo == hi else library.Dimension(lo, hi) for lo, hi in bounds]
    )


class _FileStream(io.BytesIO):
    """What OpenVINO's `export_model` writes into, passed on to a file as it comes: the
    binding takes only a BytesIO, which would otherwise hold the whole compiled model in memory
    (9.6 GiB for SDXL's UNet, beside the compiled model itself). The binding swallows what its
    stream raises, so a failed write (a full disk) is kept here and raised once it returns."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__()
        self._file = file
        self.written = 0
        self.failure: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            count = self._file.write(data)
        except OSError as error:
            self.failure = self.failure or error
            raise
        self.written += count
        return count

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)  # the binding goes back to fill in sizes

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()


def export_compiled(compiled: Any, name: str, folder: Path) -> None:
    """Write a compiled model to `folder`/`name`, streamed; the caller holds no other reference
    to it, so that it is freed before the next compile."""
    with open(folder / name, "wb") as blob:
        stream = _FileStream(blob)
        compiled.export_model(stream)
        if stream.failure is not None:
            raise stream.failure
        if stream.written == 0:  # a binding that fills the BytesIO's buffer itself
            blob.write(stream.getbuffer())


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
    onnx_path: Path,
    io: ComponentIO,
    settings: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Any:
    """The exported graph compiled as the build compiled it, with `weights` in place of the
    initializers of those names (LoRA switching): for the build's shape ranges, or for fixed
    `shapes` (its model for the optimum shape). int8 engines have the new weights compressed
    again. Compiling (and compressing) again is the switch's cost. w8a8 engines are refused:
    their activation scales were calibrated for the built weights."""
    if settings.get("activations") == "int8":
        raise InputError(
            f"{onnx_path.parent.name} has int8 activations calibrated for its built weights; "
            "merge LoRAs into a w8a8 build with `sdtrt build --lora` instead"
        )
    library = ov()
    model = shared_core().read_model(str(onnx_path))
    constants = {
        op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"
    }
    missing = sorted(set(weights) - set(constants))
    if missing:
        raise ArtifactError(f"{onnx_path} lacks weights {', '.join(missing[:3])}; rebuild")
    for name, value in weights.items():
        replacement = library.opset13.constant(np.ascontiguousarray(value))
        replacement.set_friendly_name(name)
        constants[name].output(0).replace(replacement.output(0))
    model.reshape({name: partial_shape(library, b) for name, b in bounded_shapes(io).items()})
    if settings.get("weights") == "int8":
        model = compress_weights(model)
    if shapes is not None:  # compressed first, as the build did
        model.reshape({name: library.PartialShape(list(shape)) for name, shape in shapes.items()})
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
                ov().Tensor(blob, shared_memory=True),
                str(settings.get("device", CPU)),
                compile_config(settings),
            )
        except (OSError, RuntimeError, ValueError) as error:
            raise ArtifactError(
                f"{path} could not be loaded ({first_line(error)}); rebuild the engines with "
                "`sdtrt build`"
            ) from error
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
    """A compiled OpenVINO model behind the Engine interface; where the build compiled one for
    the optimum shapes, calls of those shapes run on it and the main one is imported on first
    need. `recompile` (LoRA switching) compiles them afresh, for the given shapes or the
    build's ranges (None), in place of importing the blobs."""

    def __init__(
        self,
        name: str,
        path: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        recompile: Callable[[Mapping[str, Sequence[int]] | None], Any] | None = None,
    ) -> None:
        super().__init__(name, io)
        self._output_names = [t.name for t in io.outputs]
        self._path, self._settings = path, settings
        self._recompile = recompile
        self._main: _Imported | None = None
        self._static: _Imported | None = None
        self._static_shapes: dict[str, tuple[int, ...]] = {
            k: tuple(v) for k, v in settings.get("static_shapes", {}).items()
        }
        self._importing = threading.Lock()
        if settings.get("static_engine"):
            self._static = (
                _Imported.load(path.parent / settings["static_engine"], settings)
                if recompile is None
                else _Imported(recompile(self._static_shapes))
            )
        else:
            self._main_model()

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
                self._main = (
                    _Imported.load(self._path, self._settings)
                    if self._recompile is None
                    else _Imported(self._recompile(None))
                )
            return self._main

    def close(self) -> None:
        # The compiled models first: they read their mapped blobs until released.
        self._main = self._static = None
