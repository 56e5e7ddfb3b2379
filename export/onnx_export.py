"""Torch module to a clean, checked ONNX file.

The TorchScript exporter (`dynamo=False`) is used on purpose: on diffusers' UNet it is ~20x faster
than the dynamo exporter and its dynamic axes need no symbolic-shape constraints. Its graph is
then cleaned: dead nodes go, and Polygraphy folds constants pass after pass, inferring shapes
in between, until the graph stops shrinking (shape arithmetic the exporter wrote out node by
node, identities, casts of constants: SD 1.5's UNet goes from 2233 nodes to 2062). What went
is recorded (GraphCleanup). The weights are the module's throughout (onnx_weights.py), and what
computes on them alone (a linear layer's weight transposed for its MatMul) is left for the
backend to fold as it loads the graph. The result is shape inferred and checked. Graphs over
protobuf's 2 GB limit keep their weights in one external `<name>.data` file beside them.

The export of the fp32 graph and its conversion for the backend (CUDA fusions, fp16) are two
steps, so that a build can let the torch module go between them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import external_data_helper

from sdtrt.engine.graph_style import CONTRIB_DOMAIN, GraphStyle
from sdtrt.engine.manifest import GraphCleanup
from sdtrt.engine.onnxruntime.library import QuietDefaultLogger
from sdtrt.engine.options import DEFAULT_OPSET, Precision
from sdtrt.engine.weights.initializers import INLINE_LIMIT, weight_bytes
from sdtrt.errors import BuildError, first_line
from sdtrt.export.attention import fused_attention
from sdtrt.export.cuda_fusions import fuse_for_cuda, fused_counts
from sdtrt.export.fp16 import convert as fp16
from sdtrt.export.fp16.guard import GuardOptions, Island, guard_fp16
from sdtrt.export.fp16.policy import to_fp16
from sdtrt.export.lean import fp32_stand_ins
from sdtrt.export.onnx_weights import attach_weights, inline_small, parameter_inputs, tensor_bytes
from sdtrt.export.specs import ComponentSpec

log = logging.getLogger(__name__)

PLAIN = GraphStyle()


@dataclasses.dataclass(frozen=True)
class Exported:
    islands: tuple[Island, ...]  # nodes the fp16 guard kept in fp32
    cleanup: GraphCleanup


def export_onnx(
    spec: ComponentSpec,
    inputs: dict[str, np.ndarray],
    path: Path,
    opset: int = DEFAULT_OPSET,
    precision: Precision = Precision.FP32,
    guard: GuardOptions | None = None,
    style: GraphStyle = PLAIN,
) -> Exported:
    """Export `spec`'s module traced on `inputs` to `path` (plus `path`.data for big graphs),
    converted to fp16 (see fp16/policy.py) when asked; with `guard`, the fp16 graph keeps in
    fp32 the nodes fp16/guard.py finds and the fp32 graph is saved beside it. `style` says what
    the backend wants written out (see GraphStyle). The two steps, for a caller that keeps the
    module loaded throughout (a build releases it between them)."""
    if not converts(precision, style):
        return Exported((), export_graph(spec, inputs, path, opset, style))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        source = fp32_path(path, guard, Path(scratch))
        cleanup = export_graph(spec, inputs, source, opset, style)
        return Exported(convert_graph(source, path, precision, guard, style), cleanup)


def converts(precision: Precision, style: GraphStyle) -> bool:
    """Whether the exported fp32 graph is rewritten before a backend sees it."""
    return precision is Precision.FP16 or style.cuda_fusions


def fp32_path(path: Path, guard: GuardOptions | None, scratch: Path) -> Path:
    """Where the fp32 graph goes when it is converted into `path`: the guard's reference (kept
    for `sdtrt debug compare`), else a scratch folder."""
    return guard.reference if guard is not None else scratch / path.name


def export_graph(
    spec: ComponentSpec,
    inputs: dict[str, np.ndarray],
    path: Path,
    opset: int = DEFAULT_OPSET,
    style: GraphStyle = PLAIN,
    fp16_weights: bool = False,
) -> GraphCleanup:
    """`spec`'s module, traced on `inputs`, as a clean fp32 graph at `path` with its weights
    (beside it in `path`.data when they are too many for one protobuf); with `fp16_weights`,
    the weights are stored in fp16 and cast to fp32 where they are read."""
    module = spec.module().eval()
    args = tuple(torch.from_numpy(inputs[t.name]) for t in spec.inputs)
    attention = fused_attention(module) if style.fused_attention else contextlib.nullcontext(0)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        raw = Path(scratch) / "raw.onnx"
        with (
            warnings.catch_warnings(),
            torch.no_grad(),
            attention as fused_layers,
            fp32_stand_ins(module) as state,  # a module loaded in 16 bits traced in fp32
        ):
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
                # The weights stay the module's: graph inputs until they are written out, and
                # nothing computed from them is folded into new constants (LoRA switching finds
                # every weight under its own name).
                export_params=False,
                do_constant_folding=False,
                custom_opsets={CONTRIB_DOMAIN: 1} if fused_layers else None,
            )
        model = onnx.load(str(raw))
    tensors = parameter_inputs(model, state)
    inline_small(model, tensors)
    model, cleanup = _clean(model)
    external = tensor_bytes(tensors) >= INLINE_LIMIT
    data = path.with_name(path.name + ".data") if external else None
    attach_weights(model, tensors, data, fp16_weights)
    _save_checked(model, path)
    return cleanup


def convert_graph(
    source: Path,
    path: Path,
    precision: Precision,
    guard: GuardOptions | None = None,
    style: GraphStyle = PLAIN,
) -> tuple[Island, ...]:
    """The fp32 graph at `source` rewritten for the backend into `path`: ONNX Runtime's CUDA
    kernels fused, converted to fp16 (with the guard's fp32 islands); the nodes the guard kept
    in fp32. Weights are read from `source` one at a time where the step allows."""
    islands: tuple[Island, ...] = ()
    folder = source.parent
    if style.cuda_fusions and guard is None:
        # Its fusions rewrite weights (channels-last convolutions): they need them all loaded.
        # The guard runs the graph layer by layer on the CPU, which has no fused kernels.
        model = fuse_for_cuda(onnx.load(str(source)))
        folder = path.parent
        log.info("%s: fused %s", path.parent.name, fused_counts(model))
    else:
        model = onnx.load(str(source), load_external_data=False)
    if precision is Precision.FP16 and guard is not None:
        fp16.name_nodes(model.graph)  # the same node names in the reference and the engine
        result = guard_fp16(model, guard.feeds, guard.tolerance, folder)
        model, islands = result.model, result.islands
    elif precision is Precision.FP16:
        model = to_fp16(model, style.fp32_norms, folder)
    # What stays fp32 is still read from `source`: in the graph, so that it can move.
    external_data_helper.load_external_data_for_model(model, str(folder))
    _save_checked(model, path)
    return islands


def _clean(model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphCleanup]:
    """The exported graph with its shape arithmetic folded and dead nodes gone. Its weights are
    graph inputs here, so no folding pass copies them (each pass copies the whole model, and
    folded, a weight would become a new constant under another name)."""
    exported = _compute_nodes(model)
    model = _fold(model)
    graph = gs.import_onnx(model)
    del model
    model = gs.export_onnx(graph.cleanup().toposort())
    kept = _compute_nodes(model)
    removed = dict(sorted((exported - kept).items(), key=lambda item: -item[1]))
    return model, GraphCleanup(
        exported_nodes=sum(exported.values()), kept_nodes=sum(kept.values()), removed=removed
    )


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """Polygraphy's constant folding, pass after pass, until a pass removes nothing."""
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # its per-pass progress is not the build's
    # Folding runs constant subgraphs on ONNX Runtime, whose optimisers warn about every node
    # they leave alone.
    with QuietDefaultLogger(QuietDefaultLogger.ERROR):
        return fold_constants(
            model,
            num_passes=None,
            do_shape_inference=True,
            allow_onnxruntime_shape_inference=False,  # onnx's own, not a tool that changes
            error_ok=False,
        )


def _compute_nodes(model: onnx.ModelProto) -> collections.Counter[str]:
    """Nodes by op type, Constant nodes aside: folding turns those into weights, not away."""
    return collections.Counter(n.op_type for n in model.graph.node if n.op_type != "Constant")


def _save_checked(model: onnx.ModelProto, path: Path) -> None:
    try:
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            onnx.save(model, str(path))  # its weights are beside it already
            del model
            _check_path(path)
            return
        if weight_bytes(model) < INLINE_LIMIT:
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
        del model
        _check_path(path)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise BuildError(
            f"the exported {path.parent.name} graph is invalid: {first_line(error, 1000)}"
        ) from error


def _check_path(path: Path) -> None:
    """Shape inference and the checker on a saved graph, whose weights are not read."""
    onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True)
    onnx.checker.check_model(str(path), full_check=True)
