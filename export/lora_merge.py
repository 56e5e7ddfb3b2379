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
    """Add each LoRA's deltas to `model`'s text encoder and UNet in place; the count changed."""
    modules: dict[str, torch.nn.Module] = {c: getattr(model, c) for c in LORA_COMPONENTS}
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


def _digest(array: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    return (str(array.dtype), tuple(array.shape), hashlib.sha1(array.tobytes()).hexdigest())


def record_lora_weights(module: torch.nn.Module, onnx_path: Path, out_path: Path) -> None:
    """Write which ONNX initializer holds each weight a LoRA may change (engine/weights/switch.py).

    The TorchScript exporter renames the weights it folds (a linear layer's weight becomes a
    transposed `onnx::MatMul_N` constant), so the initializers are matched by value: a weight
    maps to the one initializer equal to it, or to its transpose, in the graph's own dtype
    (fp16 graphs round weights as torch's `.half()` does). A weight with no single match is left
    out, and a LoRA that touches it must be merged at build time instead.
    """
    graph = onnx.load(str(onnx_path))
    by_value: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    for initializer in graph.graph.initializer:
        array = numpy_helper.to_array(initializer, base_dir=str(onnx_path.parent))
        if array.dtype in (np.float32, np.float16) and array.ndim in (2, 4):
            by_value.setdefault(_digest(array), []).append(initializer.name)
    del graph
    weights: dict[str, dict[str, object]] = {}
    for name, parameter in module.named_parameters():
        if not (name.endswith(".weight") and parameter.ndim in (2, 4)):
            continue
        value = parameter.detach().numpy()
        matches = []
        for dtype in (np.float32, np.float16):
            cast = value.astype(dtype)
            matches += [(n, False) for n in by_value.get(_digest(cast), [])]
            if cast.ndim == 2:
                matches += [(n, True) for n in by_value.get(_digest(cast.T.copy()), [])]
        initializer, transposed = matches[0] if len(set(matches)) == 1 else (None, False)
        weights[name.removeprefix("inner.")] = {
            "initializer": initializer, "transposed": transposed, "shape": list(value.shape)
        }
    # An initializer two weights claim (equal values) cannot be re-weighted for one of them.
    claims = Counter(w["initializer"] for w in weights.values() if w["initializer"])
    for entry in weights.values():
        if claims[entry["initializer"]] > 1:
            entry["initializer"] = None
    mapped = sum(1 for w in weights.values() if w["initializer"])
    log.info("%s: %d of %d weights mapped for LoRA switching", onnx_path, mapped, len(weights))
    write_json(out_path, {"onnx": onnx_path.name, "weights": weights})
