"""LoRAs merged into the torch weights before export, with the deltas the runtime would compute."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from sdtrt.engine.artifact import write_json
from sdtrt.engine.weights.lora import LORA_COMPONENTS, LoraSource, WeightShapes, lora_deltas

log = logging.getLogger(__name__)

# Per LoRA-able weight of a torch module (a 2-D or 4-D `.weight`): its shape, and the digests
# an exported initializer holding it may have (fp32 or fp16, as it is or transposed).
Digest = tuple[str, tuple[int, ...], str]  # dtype, shape, sha1 of the bytes
WeightDigests = dict[str, tuple[tuple[int, ...], list[tuple[Digest, bool]]]]


def weight_shapes(modules: dict[str, torch.nn.Module]) -> WeightShapes:
    """Every linear and convolution weight of each network: what a LoRA may change."""
    return {
        component: {
            name: tuple(p.shape)
            for name, p in module.named_parameters()
            if name.endswith(".weight") and p.ndim in (2, 4)
        }
        for component, module in modules.items()
    }


def merge_loras(model: Any, sources: Sequence[LoraSource]) -> int:
    """Add each LoRA's deltas to `model`'s text encoders and UNet in place; the count changed."""
    loaded = [c for c in LORA_COMPONENTS if getattr(model, c, None) is not None]
    modules: dict[str, torch.nn.Module] = {c: getattr(model, c) for c in loaded}
    parameters = {c: dict(m.named_parameters()) for c, m in modules.items()}
    changed = 0
    with torch.no_grad():
        for component, weight, delta in lora_deltas(sources, weight_shapes(modules)):
            parameter = parameters[component][weight]
            parameter.add_(torch.from_numpy(delta).to(parameter.dtype))
            changed += 1
    log.info("merged %d LoRA(s) into %d weights", len(sources), changed)
    return changed


def loras_digest(sources: Sequence[LoraSource]) -> str:
    """What a build with these LoRAs depends on: each file's content and scale, in order."""
    digest = hashlib.sha256()
    for source in sources:
        with open(source.path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(f"\0{source.scale!r}\0".encode())
    return digest.hexdigest()


def _digest(array: np.ndarray) -> Digest:
    return (str(array.dtype), tuple(array.shape), hashlib.sha1(array.tobytes()).hexdigest())


def weight_digests(module: torch.nn.Module) -> WeightDigests:
    """What `write_lora_map` matches an exported graph's initializers against, taken while the
    module is loaded (the build releases it before the graph is converted and built)."""
    digests: WeightDigests = {}
    for name, parameter in module.named_parameters():
        if not (name.endswith(".weight") and parameter.ndim in (2, 4)):
            continue
        value = parameter.detach().numpy()
        candidates = []
        for dtype in (np.float32, np.float16):
            cast = value.astype(dtype)
            candidates.append((_digest(cast), False))
            if cast.ndim == 2:
                candidates.append((_digest(cast.T.copy()), True))
        digests[name.removeprefix("inner.")] = (tuple(value.shape), candidates)
    return digests


def record_lora_weights(module: torch.nn.Module, onnx_path: Path, out_path: Path) -> None:
    """Write which ONNX initializer holds each weight a LoRA may change (engine/weights/switch.py):
    `write_lora_map` for a module still loaded."""
    write_lora_map(weight_digests(module), onnx_path, out_path)


def write_lora_map(digests: WeightDigests, onnx_path: Path, out_path: Path) -> None:
    """Write which ONNX initializer holds each weight of `digests`.

    The weights keep their names through the export, but conversions may rename or retype them
    (fp16 graphs round weights as torch's `.half()` does; an exporter that folds renames a
    transposed weight), so initializers are matched by value: a weight maps to the one
    initializer equal to it, or to its transpose, in the graph's own dtype. A weight with no
    single match is left out, and a LoRA that touches it must be merged at build time instead;
    a weight with no match at all is marked unused (SDXL's first text encoder ends a layer
    early, and the export drops the last), and a LoRA's change to it is moot.
    The graph's weights are read one at a time.
    """
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    by_value: dict[Digest, list[str]] = {}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    for initializer in graph.initializer:
        if initializer.data_type in floats and len(initializer.dims) in (2, 4):
            array = numpy_helper.to_array(initializer, base_dir=str(onnx_path.parent))
            by_value.setdefault(_digest(array), []).append(initializer.name)
    del graph
    weights: dict[str, dict[str, object]] = {}
    for name, (shape, candidates) in digests.items():
        matches = [(n, transposed) for d, transposed in candidates for n in by_value.get(d, [])]
        initializer, transposed = matches[0] if len(set(matches)) == 1 else (None, False)
        weights[name] = {"initializer": initializer, "transposed": transposed, "shape": list(shape)}
        if not matches:  # in no form anywhere in the graph: a layer the outputs do not use
            weights[name]["unused"] = True
    # An initializer two weights claim (equal values) cannot be re-weighted for one of them.
    claims = Counter(w["initializer"] for w in weights.values() if w["initializer"])
    for entry in weights.values():
        if claims[entry["initializer"]] > 1:
            entry["initializer"] = None
    mapped = sum(1 for w in weights.values() if w["initializer"])
    log.info("%s: %d of %d weights mapped for LoRA switching", onnx_path, mapped, len(weights))
    write_json(out_path, {"onnx": onnx_path.name, "weights": weights})
