"""Re-weighting built engines with LoRAs, without a rebuild.

The build writes, beside each LoRA-able network's ONNX, `lora_weights.json`: for every linear
and convolution weight of the torch module, the ONNX initializer holding it (and whether
transposed). A switch reads the LoRA files (numpy), reads the touched base weights back from the
exported ONNX, and gives each backend base + delta under the initializer's name:

- ONNX Runtime, on the CPU or CUDA: a new session on the exported (portable) graph with those
  initializers overridden; ORT then optimises the graph as it loads, which is the switch's
  main cost;
- OpenVINO: the exported graph compiled again with those constants replaced, as the build
  compiled it (int8 engines: compressed again);
- TensorRT: the engine, built with `--refittable`, is refitted in place (engine/trt_refit.py).

Base weights always come from the ONNX file, so switching A -> B -> A leaves nothing of B.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ValidationError

from sdtrt.engine.backends import load_component
from sdtrt.engine.base import Engine
from sdtrt.engine.lora import LORA_COMPONENTS, LoraSource, lora_deltas
from sdtrt.engine.manifest import ComponentRecord, check_component_files
from sdtrt.engine.onnx_initializers import read_initializers
from sdtrt.errors import ArtifactError, InputError

log = logging.getLogger(__name__)

WEIGHT_MAP = "lora_weights.json"
ORT_BACKENDS = ("onnxruntime", "onnxruntime-cuda")
TRT_BACKENDS = ("tensorrt",)
OPENVINO_BACKENDS = ("openvino", "openvino-gpu", "openvino-npu")


class MappedWeight(BaseModel):
    initializer: str | None  # None: no single initializer holds it (folded or shared)
    transposed: bool = False
    shape: tuple[int, ...]


class WeightMap(BaseModel):
    onnx: str
    weights: dict[str, MappedWeight]


def read_weight_map(directory: Path, record: ComponentRecord) -> WeightMap:
    path = directory / record.name / WEIGHT_MAP
    if not path.is_file():
        raise ArtifactError(
            f"{directory} was built without a LoRA weight map for {record.name}; rebuild it "
            "with this sdtrt to switch LoRAs, or merge them with `sdtrt build --lora`"
        )
    try:
        return WeightMap.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError):
        raise ArtifactError(f"{path} is damaged; rebuild the engines") from None


def lora_initializers(
    directory: Path, records: Mapping[str, ComponentRecord], sources: Sequence[LoraSource]
) -> dict[str, dict[str, np.ndarray]]:
    """component -> initializer name -> base + delta, in the initializer's own dtype."""
    maps = {name: read_weight_map(directory, records[name]) for name in LORA_COMPONENTS}
    shapes = {c: {w: m.shape for w, m in wm.weights.items()} for c, wm in maps.items()}
    deltas: dict[str, dict[str, np.ndarray]] = {c: {} for c in LORA_COMPONENTS}
    for component, weight, delta in lora_deltas(sources, shapes):
        mapped = maps[component].weights[weight]
        if mapped.initializer is None:
            raise InputError(
                f"the {component} weight {weight} cannot be re-weighted in these engines (the "
                "exporter folded or shared it); merge this LoRA with `sdtrt build --lora`"
            )
        deltas[component][mapped.initializer] = delta.T if mapped.transposed else delta
    result: dict[str, dict[str, np.ndarray]] = {}
    for component, changes in deltas.items():
        onnx_path = directory / records[component].name / maps[component].onnx
        base = read_initializers(onnx_path, changes)
        result[component] = {
            name: (base[name].astype(np.float32) + delta).astype(base[name].dtype)
            for name, delta in changes.items()
        }
    return result


def load_with_initializers(
    directory: Path, record: ComponentRecord, initializers: Mapping[str, np.ndarray]
) -> Engine:
    """`record`'s network with those initializers replaced; plain when there are none."""
    if not initializers:
        return load_component(directory, record)
    check_component_files(directory, record)
    if record.backend in ORT_BACKENDS:
        from sdtrt.engine.onnxruntime_backend import OrtEngine
        from sdtrt.engine.onnxruntime_cuda import OrtCudaEngine

        engine_class = OrtCudaEngine if record.backend == "onnxruntime-cuda" else OrtEngine
        # The export, not the saved engine: ORT lays the CPU engine's weights out for this
        # CPU (NCHWc blocks), and the export is what the weight map names.
        settings = {k: v for k, v in record.settings.items() if k != "nchwc_block"}
        return engine_class(
            record.name, directory / record.onnx, record.io, settings, initializers=initializers
        )
    if record.backend in OPENVINO_BACKENDS:
        from sdtrt.engine.openvino_backend import OpenVinoEngine, compile_with_weights

        compiled = compile_with_weights(directory / record.onnx, record.io, record.settings,
                                        initializers)  # fmt: skip
        return OpenVinoEngine(
            record.name, directory / record.engine, record.io, record.settings, compiled
        )
    if record.backend in TRT_BACKENDS:
        # Loaded afresh, so every weight the LoRAs leave alone has its built value.
        engine = load_component(directory, record)
        try:
            engine.refit(initializers)  # type: ignore[attr-defined]
        except BaseException:
            engine.close()
            raise
        return engine
    raise InputError(
        f"switching LoRAs is not supported on the {record.backend} backend; merge them with "
        "`sdtrt build --lora` instead"
    )
