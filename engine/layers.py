"""Every intermediate tensor of an ONNX graph, and how far one run's tensors are from another's.

What the fp16 build guard and `sdtrt debug compare` share: Polygraphy marks every tensor as an
output (`modify_outputs(MARK_ALL)`), ONNX Runtime's CPU provider runs the graph with its
optimisations off (fusions would hide the tensors being compared, and its cast elimination
would compute fp16 chains in fp32), and tensors are compared by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdtrt.engine.graph_style import cuda_only, fold_weight_layouts, kernel_constants
from sdtrt.engine.onnxruntime.library import (
    CPU,
    CUDA,
    cuda_provider_options,
    load_cuda_libraries,
    ort,
)
from sdtrt.engine.tensors import Feed
from sdtrt.engine.weights.initializers import weights_as_inputs
from sdtrt.errors import BackendUnavailable

if TYPE_CHECKING:
    import onnx

Tensors = dict[str, np.ndarray]


def _missing(error: ImportError) -> BackendUnavailable:
    # onnx and Polygraphy come with the export extra; the runtime runs without them.
    return BackendUnavailable(
        f"comparing tensors needs {error.name}; install it with `pip install 'sdtrt[export]'`"
    )


def load_graph(path: Path) -> onnx.ModelProto:
    """The ONNX graph at `path`, weights included."""
    try:
        import onnx
    except ImportError as error:
        raise _missing(error) from error
    return onnx.load(str(path))


def all_tensors(model: onnx.ModelProto, feeds: Sequence[Feed]) -> list[Tensors]:
    """Every float tensor of `model` (graph inputs included) for each feed."""
    return list(each_tensors(model, feeds))


def each_tensors(
    model: onnx.ModelProto, feeds: Iterable[Feed], base_dir: Path | None = None
) -> Iterator[Tensors]:
    """`all_tensors`, one feed at a time: a caller that compares and lets go holds one run's
    tensors at once (every tensor of SD 1.5's UNet, several GB, per feed). Weights kept in
    external data are read from `base_dir`, the folder of the graph they belong to.

    The graph reaches ONNX Runtime with its weights turned into inputs, fed as arrays at each
    run (ONNX Runtime reads numpy inputs in place; nothing is folded with optimisations off):
    no second copy of a multi-GB graph is made, and none passes protobuf's 2 GB limit."""
    try:
        from polygraphy import constants
        from polygraphy.backend.onnx import modify_outputs
    except ImportError as error:
        raise _missing(error) from error
    from onnx import numpy_helper

    cuda = cuda_only(model.graph)
    graph, tensors = weights_as_inputs(model, kernel_constants(model.graph) if cuda else ())
    if cuda:
        fold_weight_layouts(graph)
    folder = str(base_dir or "")
    weights = {t.name: numpy_helper.to_array(t, folder) for t in tensors}
    del tensors
    marked = modify_outputs(graph, outputs=constants.MARK_ALL)
    library = ort()
    options = library.SessionOptions()
    options.graph_optimization_level = library.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = library.InferenceSession(
        marked.SerializeToString(), options, providers=_providers(cuda)
    )
    del marked, graph
    names = [o.name for o in session.get_outputs()]
    for feed in feeds:
        run = dict(zip(names, session.run(names, {**feed, **weights}), strict=True))
        run.update(feed)
        yield {k: v for k, v in run.items() if v.dtype in (np.float32, np.float16)}


def _providers(needs_cuda: bool) -> list[str | tuple[str, dict[str, str]]]:
    """The CPU, unless the graph holds nodes that only ONNX Runtime's CUDA provider runs
    (engines built for onnxruntime-cuda); then that provider, in fp32 (TF32 off)."""
    if not needs_cuda:
        return [CPU]
    if CUDA not in ort().get_available_providers():
        raise BackendUnavailable(
            "this graph holds ONNX Runtime's CUDA-only kernels; comparing its tensors needs "
            "onnxruntime-gpu and an NVIDIA GPU"
        )
    load_cuda_libraries()
    return [(CUDA, cuda_provider_options({})), CPU]


def finite_scale(array: np.ndarray) -> float:
    """Largest finite |x|."""
    magnitude = np.abs(array.astype(np.float32))
    finite = magnitude[np.isfinite(magnitude)]
    return float(finite.max()) if finite.size else 0.0


def relative_error(expected: np.ndarray, actual: np.ndarray, scale: float) -> float:
    """max |actual - expected| / scale over finite values; inf where one is NaN/inf and the
    other is not the same (attention masks hold -inf in both, and that is no divergence)."""
    got, want = actual.astype(np.float32), expected.astype(np.float32)
    if not got.size:
        return 0.0
    finite = np.isfinite(got) & np.isfinite(want)
    if not finite.all():
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        if not (finite | same).all():
            return float("inf")
        if not finite.any():
            return 0.0
        got, want = got[finite], want[finite]
    return float(np.abs(got - want).max()) / max(scale, 1e-6)


def tensor_errors(
    reference: Sequence[Mapping[str, np.ndarray]],
    actual: Iterable[Tensors],
    scales: Mapping[str, float],
) -> dict[str, float]:
    """Worst relative error per tensor over the runs, for tensors both have with equal shapes."""
    errors: dict[str, float] = {}
    for expected_run, actual_run in zip(reference, actual, strict=True):
        for name, expected in expected_run.items():
            got = actual_run.get(name)
            if got is None or got.shape != expected.shape:
                continue
            error = relative_error(expected, got, scales.get(name, 0.0))
            errors[name] = max(errors.get(name, 0.0), error)
    return errors


def scales_of(runs: Sequence[Tensors]) -> dict[str, float]:
    """Largest finite |x| per tensor over the runs."""
    scales: dict[str, float] = {}
    for run in runs:
        for name, array in run.items():
            scales[name] = max(scales.get(name, 0.0), finite_scale(array))
    return scales
