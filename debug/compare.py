"""`sdtrt debug compare`: each network of an engine directory next to its fp32 reference.

The reference is the exported fp32 ONNX on ONNX Runtime CPU: the component's own ONNX when it
was built in fp32, or the fp32 graph a guarded fp16 build keeps beside its engine (an unguarded
fp16 build keeps none, so its networks are reported as not comparable). Each network is fed the
same inputs twice: the engine's outputs are compared with the reference's, and the graph the
engine runs (its ONNX file) is run tensor by tensor next to the reference, so that the first
tensors that diverge, in graph order, point at where the engine goes wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdtrt.engine.backends import load_component
from sdtrt.engine.layers import (
    all_tensors,
    load_graph,
    relative_error,
    scales_of,
    tensor_errors,
)
from sdtrt.engine.manifest import ComponentRecord, Manifest, read_manifest
from sdtrt.engine.options import Precision
from sdtrt.runtime.tokenizer import PromptTokenizer
from sdtrt.tolerances import EXPORT_TOLERANCE

# How many diverging tensors to report per network: the first ones carry the information.
FIRST_DIVERGING = 5


@dataclass(frozen=True)
class Divergence:
    tensor: str
    relative_error: float  # max |engine - reference| / max |reference|; inf when not finite


@dataclass
class ComponentComparison:
    component: str
    precision: str
    tolerance: float
    reference: str | None  # the fp32 ONNX compared with; None when there is none
    skipped: str | None = None  # why it was not compared
    outputs: list[Divergence] = field(default_factory=list)  # every output, diverging or not
    first_diverging: list[Divergence] = field(default_factory=list)  # in graph order

    @property
    def diverges(self) -> bool:
        return any(o.relative_error > self.tolerance for o in self.outputs)


def _reference_path(record: ComponentRecord) -> str | None:
    if record.reference_onnx is not None:
        return record.reference_onnx
    if record.precision is Precision.FP32:
        return record.onnx
    return None


def _inputs(
    record: ComponentRecord, manifest: Manifest, tokenizer: PromptTokenizer, prompt: str, seed: int
) -> dict[str, np.ndarray]:
    """Inputs at the build's optimal shapes: the prompt's tokens, random latents, and a middle
    timestep."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in record.io.inputs:
        shape = (
            record.io.profile[spec.name].opt
            if spec.name in record.io.profile
            else tuple(int(d) for d in spec.shape)
        )
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            ids = tokenizer([prompt] * shape[0]).astype(spec.dtype)
            feeds[spec.name] = ids[:, : shape[1]] if len(shape) == 2 else ids
        elif spec.name == "timestep":
            feeds[spec.name] = np.full(shape, 500.0, dtype=spec.dtype)
        elif spec.name == "latent":
            scale = np.float32(manifest.model.vae_scaling_factor)
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32) / scale
        else:
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
    return feeds


def _layer_path(directory: Path, record: ComponentRecord) -> Path:
    """The graph the engine runs, where it is ONNX (ONNX Runtime's optimised file), else the
    ONNX it was built from."""
    engine = directory / record.engine
    return engine if engine.suffix == ".onnx" else directory / record.onnx


def compare_component(
    directory: Path,
    manifest: Manifest,
    tokenizer: PromptTokenizer,
    name: str,
    prompt: str,
    seed: int = 0,
) -> ComponentComparison:
    record = manifest.components[name]
    tolerance = EXPORT_TOLERANCE[record.precision]
    reference_path = _reference_path(record)
    result = ComponentComparison(name, record.precision.value, tolerance, reference_path)
    if reference_path is None:
        result.skipped = (
            f"no fp32 reference: {record.precision.value} without the fp16 guard keeps none "
            "(rebuild with --fp16-guard to compare)"
        )
        return result
    feeds = _inputs(record, manifest, tokenizer, prompt, seed)
    reference_graph = load_graph(directory / reference_path)
    reference = all_tensors(reference_graph, [feeds])
    with load_component(directory, record) as engine:
        produced = engine.infer(feeds)
    for spec in record.io.outputs:
        expected = reference[0][spec.name]
        scale = float(np.abs(expected).max()) if expected.size else 0.0
        error = relative_error(expected, produced[spec.name], scale)
        result.outputs.append(Divergence(spec.name, error))
    layer_path = _layer_path(directory, record)
    if layer_path == directory / reference_path:  # an fp32 engine not in ONNX: the same graph
        graph, actual = reference_graph, reference
    else:
        graph = load_graph(layer_path)
        actual = all_tensors(graph, [feeds])
    errors = tensor_errors(reference, actual, scales_of(reference))
    inputs = {t.name for t in record.io.inputs}
    for node in graph.graph.node:  # graph order: the first divergence is the cause
        for output in node.output:
            if output not in inputs and errors.get(output, 0.0) > tolerance:
                result.first_diverging.append(Divergence(output, errors[output]))
        if len(result.first_diverging) >= FIRST_DIVERGING:
            break
    return result


def compare(directory: Path, prompt: str, seed: int = 0) -> list[ComponentComparison]:
    """Every network of the engine directory next to its fp32 reference."""
    manifest = read_manifest(directory)
    tokenizers = {
        name: PromptTokenizer(directory / relative)
        for name, relative in manifest.text_encoders.items()
    }
    first = next(iter(tokenizers.values()))
    return [
        compare_component(
            directory=directory,
            manifest=manifest,
            tokenizer=tokenizers.get(name, first),
            name=name,
            prompt=prompt,
            seed=seed,
        )
        for name in manifest.components
    ]
