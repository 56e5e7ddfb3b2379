"""Torch module to a clean, checked ONNX file.

The TorchScript exporter (`dynamo=False`) is used on purpose: on diffusers' UNet it is ~20x faster
than the dynamo exporter and its dynamic axes need no symbolic-shape constraints. Its graph is
then cleaned with onnx-graphsurgeon (dead nodes, constant folding, topological order), shape
inferred and checked. Graphs over protobuf's 2 GB limit keep their weights in one external
`<name>.data` file beside them.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from sdtrt.engine.options import GraphStyle, Precision
from sdtrt.errors import BuildError
from sdtrt.export import fp16
from sdtrt.export.attention import CONTRIB_DOMAIN, fused_attention
from sdtrt.export.fp16_guard import GuardOptions, Island, guard_fp16
from sdtrt.export.precision import to_fp16
from sdtrt.export.specs import ComponentSpec

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
PLAIN = GraphStyle()
# Below protobuf's 2 GB message limit, with room for the graph itself.
INLINE_LIMIT = 2**31 - 2**27


def export_onnx(
    spec: ComponentSpec,
    inputs: dict[str, np.ndarray],
    path: Path,
    opset: int = DEFAULT_OPSET,
    precision: Precision = Precision.FP32,
    guard: GuardOptions | None = None,
    style: GraphStyle = PLAIN,
) -> tuple[Island, ...]:
    """Export `spec`'s module traced on `inputs` to `path` (plus `path`.data for big graphs),
    converted to fp16 (see precision.py) when asked; with `guard`, the fp16 graph keeps in fp32
    the nodes fp16_guard.py finds, the fp32 graph is saved beside it, and those are returned.
    `style` says what the backend wants written out (see GraphStyle)."""
    module = spec.module().eval()
    args = tuple(torch.from_numpy(inputs[t.name]) for t in spec.inputs)
    attention = fused_attention(module) if style.fused_attention else contextlib.nullcontext(0)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        raw = Path(scratch) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad(), attention as fused_layers:
            # Tracing warns about every Python-level shape decision; the dynamic axes below and
            # the validation after the build are what guard against them.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(raw),
                dynamo=False,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                custom_opsets={CONTRIB_DOMAIN: 1} if fused_layers else None,
            )
        # Passed straight in so that _clean holds the only reference and can free it early:
        # a UNet is several GB per copy.
        model = _clean(onnx.load(str(raw)))
    islands: tuple[Island, ...] = ()
    if precision is Precision.FP16 and guard is not None:
        fp16.name_nodes(model.graph)  # the same node names in the reference and the engine
        result = guard_fp16(model, guard.feeds, guard.tolerance)  # leaves `model` as it was
        _save_checked(model, guard.reference)  # after: saving a big graph moves its weights out
        model, islands = result.model, result.islands
    elif precision is Precision.FP16:
        model = to_fp16(model, style.fp32_norms)
    _save_checked(model, path)
    return islands


def _clean(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    del model
    graph.cleanup().toposort()
    graph.fold_constants(error_ok=False).cleanup()
    return gs.export_onnx(graph.toposort())


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data in the graph; protobuf refuses even to measure a message over 2 GB."""
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    for node in model.graph.node:
        total += sum(
            len(a.t.raw_data) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR
        )
    return total


def _save_checked(model: onnx.ModelProto, path: Path) -> None:
    try:
        if _weight_bytes(model) < INLINE_LIMIT:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, str(path))
            return
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
        )
        onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True)
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0]
        raise BuildError(f"the exported {path.parent.name} graph is invalid: {first}") from None
