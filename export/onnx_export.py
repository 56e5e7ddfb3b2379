"""Torch module to a clean, checked ONNX file.

The TorchScript exporter (`dynamo=False`) is used on purpose: on diffusers' UNet it is ~20x faster
than the dynamo exporter and its dynamic axes need no symbolic-shape constraints. Its graph is
then cleaned: dead nodes go, and Polygraphy folds constants pass after pass, inferring shapes
in between, until the graph stops shrinking (shape arithmetic the exporter wrote out node by
node, identities, casts of constants: SD 1.5's UNet goes from 1937 nodes to 1774). What went
is recorded (GraphCleanup). The result is shape inferred and checked. Graphs over protobuf's
2 GB limit keep their weights in one external `<name>.data` file beside them.
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

from sdtrt.engine.graph_style import CONTRIB_DOMAIN, GraphStyle
from sdtrt.engine.manifest import GraphCleanup
from sdtrt.engine.onnxruntime.library import QuietDefaultLogger
from sdtrt.engine.options import DEFAULT_OPSET, Precision
from sdtrt.engine.weights.initializers import INLINE_LIMIT, weight_bytes, weights_as_inputs
from sdtrt.errors import BuildError, first_line
from sdtrt.export.attention import fused_attention
from sdtrt.export.cuda_fusions import fuse_for_cuda, fused_counts
from sdtrt.export.fp16 import convert as fp16
from sdtrt.export.fp16.guard import GuardOptions, Island, guard_fp16
from sdtrt.export.fp16.policy import to_fp16
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
    converted to fp16 (see precision.py) when asked; with `guard`, the fp16 graph keeps in fp32
    the nodes fp16/guard.py finds and the fp32 graph is saved beside it.
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
        model, cleanup = _clean(onnx.load(str(raw)))
    islands: tuple[Island, ...] = ()
    if style.cuda_fusions and guard is None:
        # The guard runs the graph layer by layer on the CPU, which has no fused kernels.
        model = fuse_for_cuda(model)
        log.info("%s: fused %s", path.parent.name, fused_counts(model))
    if precision is Precision.FP16 and guard is not None:
        fp16.name_nodes(model.graph)  # the same node names in the reference and the engine
        result = guard_fp16(model, guard.feeds, guard.tolerance)  # leaves `model` as it was
        _save_checked(model, guard.reference)  # after: saving a big graph moves its weights out
        model, islands = result.model, result.islands
    elif precision is Precision.FP16:
        model = to_fp16(model, style.fp32_norms)
    _save_checked(model, path)
    return Exported(islands, cleanup)


def _clean(model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphCleanup]:
    exported = _compute_nodes(model)
    # What folding should remove is shape arithmetic and small constants; the torch exporter has
    # folded what the weights feed already. Weights must stay weights, under their names: LoRA
    # switching finds them so (folded, CLIP's position table became a new constant). And each
    # folding pass copies the whole model: SD 1.5's 3.4 GB UNet, folded with its weights, ran
    # out of 24 GB.
    light, weights = weights_as_inputs(model)
    del model  # the weights hold what is still needed of it
    model = _fold(light)
    _put_weights_back(model, weights)
    del weights
    graph = gs.import_onnx(model)
    del model
    model = gs.export_onnx(graph.cleanup().toposort())
    kept = _compute_nodes(model)
    removed = dict(sorted((exported - kept).items(), key=lambda item: -item[1]))
    return model, GraphCleanup(
        exported_nodes=sum(exported.values()), kept_nodes=sum(kept.values()), removed=removed
    )


def _put_weights_back(model: onnx.ModelProto, weights: list[onnx.TensorProto]) -> None:
    """The weights `weights_as_inputs` made inputs, back as weights (those a node still reads)."""
    names = {t.name for t in weights}
    inputs = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    read = {name for node in model.graph.node for name in node.input}
    model.graph.initializer.extend(t for t in weights if t.name in read)


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
        onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True)
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise BuildError(
            f"the exported {path.parent.name} graph is invalid: {first_line(error, 1000)}"
        ) from error
