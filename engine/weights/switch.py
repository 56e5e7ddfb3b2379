"""Re-weighting built engines with LoRAs, without a rebuild.

The build writes, beside each LoRA-able network's ONNX, `lora_weights.json`: for every linear
and convolution weight of the torch module, the ONNX initializer holding it (and whether
transposed). A switch reads the LoRA files (numpy), reads the touched base weights back from the
exported ONNX, and hands base + delta, under the initializer's name, to the backend's `load`
(ONNX Runtime: a session on the export with those initializers overridden; OpenVINO: the export
compiled again; TensorRT: a refit in place).

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
from sdtrt.engine.layout import WEIGHT_MAP
from sdtrt.engine.manifest import ComponentRecord
from sdtrt.engine.weights.initializers import read_initializers
from sdtrt.engine.weights.lora import LoraSource, lora_components, lora_deltas
from sdtrt.errors import ArtifactError, InputError

log = logging.getLogger(__name__)


class MappedWeight(BaseModel):
    initializer: str | None  # None: no single initializer holds it (folded, shared or unused)
    transposed: bool = False
    shape: tuple[int, ...]
    unused: bool = False  # the graph holds it in no form: the outputs do not depend on it


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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as error:
        raise ArtifactError(f"{path} is damaged; rebuild the engines") from error


def lora_initializers(
    directory: Path, records: Mapping[str, ComponentRecord], sources: Sequence[LoraSource]
) -> dict[str, dict[str, np.ndarray]]:
    """component -> initializer name -> base + delta, in the initializer's own dtype."""
    switched = lora_components(records)
    maps = {name: read_weight_map(directory, records[name]) for name in switched}
    shapes = {c: {w: m.shape for w, m in wm.weights.items()} for c, wm in maps.items()}
    deltas: dict[str, dict[str, np.ndarray]] = {c: {} for c in switched}
    moot: list[str] = []
    for component, weight, delta in lora_deltas(sources, shapes):
        mapped = maps[component].weights[weight]
        if mapped.unused:  # the graph holds it in no form: its change reaches no output
            moot.append(f"{component} {weight}")
            continue
        if mapped.initializer is None:
            raise InputError(
                f"the {component} weight {weight} cannot be re-weighted in these engines (the "
                "exporter folded or shared it); merge this LoRA with `sdtrt build --lora`"
            )
        deltas[component][mapped.initializer] = delta.T if mapped.transposed else delta
    if moot:  # SDXL's first text encoder's last layer, which its export drops
        log.info("%d LoRA weights change layers these engines do not use: %s", len(moot), moot)
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
    return load_component(directory, record, initializers)
