"""The fp16 build guard: run the fp16 graph next to the fp32 one and keep in fp32 what breaks.

A fixed list of fp32 ops (precision.py) is a guess; a fine-tuned model whose activations are
larger than the base model's still overflows. So, on calibration inputs:

1. the fp32 graph runs with every intermediate tensor marked as an output (engine/layers.py:
   Polygraphy marks them, ONNX Runtime CPU runs the graph). A tensor beyond fp16's range (65504)
   cannot exist in fp16: its producer and its readers stay fp32, proved necessary;
2. the fp16 graph with those islands runs the same way and is compared tensor by tensor in
   graph order; while an output is non-finite or further from fp32 than the tolerance, the
   first nodes that diverge (non-finite, or beyond the tolerance while every input they read
   is within it) join the islands, or, when those are fp32 already, the nodes that feed them;
   the graph is converted and checked again;
3. the islands found in step 2 are then pruned one by one (dropped when the outputs still
   pass without them), so what is kept is small.

Polygraphy's own comparator judges outputs elementwise; this needs the first diverging tensor in
graph order and fp16's range, so the comparison is ours.

Step 1 is exact: it reads fp32 values. Step 2 on ONNX Runtime's CPU provider is not as strict as
a GPU: ops without fp16 CPU kernels run in fp32 between casts that onnxruntime merges, so a chain
of them rounds only where a tensor leaves it. Overflow, the cause of black images, is step 1's.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from sdtrt.engine.layers import each_tensors, scales_of, tensor_errors
from sdtrt.engine.ranges import BuildRanges
from sdtrt.engine.tensors import Feed
from sdtrt.errors import BuildError
from sdtrt.export.fp16 import convert as fp16
from sdtrt.export.fp16.policy import FP32_OPS, embedding_nodes
from sdtrt.export.specs import ComponentSpec

log = logging.getLogger(__name__)

# Each round converts and runs the graph once per calibration input.
MAX_ROUNDS = 24
# Pruning tries each searched island once; beyond this many it is skipped (too costly).
MAX_PRUNE = 32


@dataclass(frozen=True)
class Island:
    """A node the guard keeps in fp32, and why."""

    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class GuardOptions:
    """What the build hands the export for a guarded fp16 conversion."""

    feeds: tuple[Feed, ...]  # calibration inputs
    tolerance: float  # largest relative error of an output vs fp32
    reference: Path  # where the fp32 graph is kept, for `sdtrt debug compare`


@dataclass(frozen=True)
class GuardResult:
    model: onnx.ModelProto  # the fp16 graph with the islands in fp32
    islands: tuple[Island, ...]
    max_output_error: float  # worst relative error of an output vs fp32 on the calibration
    rounds: int  # conversions checked


def calibration_feeds(
    spec: ComponentSpec, ranges: BuildRanges, timesteps: Sequence[float], seed: int = 0
) -> tuple[Feed, ...]:
    """Inputs to compare fp16 with fp32 on: at the smallest shapes the build allows (every tensor
    of the graph is kept at once), one per timestep for a network that takes one (noise levels
    from early to late), else two random draws."""
    rng = np.random.default_rng(seed)
    point = {symbol: low for symbol, (low, _, _) in spec.dims(ranges).items()}
    if not any(t.name == "timestep" for t in spec.inputs):
        return tuple(spec.sample_inputs(point, rng) for _ in range(2))
    feeds = []
    for timestep in timesteps:
        feed = spec.sample_inputs(point, rng)
        feed["timestep"] = np.full_like(feed["timestep"], timestep)
        feeds.append(feed)
    return tuple(feeds)


class _StoredRun(Mapping[str, np.ndarray]):
    """One calibration input's fp32 tensors, written to `folder` and read back memory-mapped:
    SD 1.5's UNet has several GB of them per input, more than memory holds three times over."""

    def __init__(self, run: Mapping[str, np.ndarray], folder: Path) -> None:
        folder.mkdir()
        self._paths = {}
        for index, (name, array) in enumerate(run.items()):
            self._paths[name] = folder / f"{index}.npy"
            np.save(self._paths[name], array)

    def __getitem__(self, name: str) -> np.ndarray:
        return np.load(self._paths[name], mmap_mode="r")

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


class _Reference:
    """The fp32 graph's tensors on the calibration inputs (on disk, see _StoredRun), and their
    scales."""

    def __init__(
        self, model: onnx.ModelProto, feeds: Sequence[Feed], scratch: Path, base_dir: Path | None
    ) -> None:
        self.runs = []
        # Largest finite |x| per tensor (infinities, as in attention masks, exist in fp16 too).
        self.scale: dict[str, float] = {}
        for index, run in enumerate(each_tensors(model, feeds, base_dir)):
            for name, scale in scales_of([run]).items():
                self.scale[name] = max(self.scale.get(name, 0.0), scale)
            self.runs.append(_StoredRun(run, scratch / f"reference-{index}"))

    def errors(self, values: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
        """Relative error of each tensor vs fp32 (max |a - b| / max |b|); inf when not finite."""
        return tensor_errors(self.runs, values, self.scale)


def _float_inputs(node: onnx.NodeProto, reference: _Reference) -> list[str]:
    return [name for name in node.input if name in reference.scale]


def _overflow_islands(graph: onnx.GraphProto, reference: _Reference) -> dict[str, Island]:
    """Nodes whose fp32 outputs, or the inputs they read, lie beyond fp16's range."""
    islands: dict[str, Island] = {}
    beyond = {name for name, scale in reference.scale.items() if scale > fp16.FP16_MAX}
    for node in graph.node:
        if node.op_type in FP32_OPS or node.op_type in fp16.SHAPE_OPS:
            continue  # fp32 (or no float arithmetic) whatever the guard says
        for name in node.output:
            if name in beyond:
                reason = f"overflow: |{name}| reaches {reference.scale[name]:.3g} in fp32"
                islands[node.name] = Island(node.name, node.op_type, reason)
                break
        else:
            read = next((n for n in node.input if n in beyond), None)
            if read is not None:
                islands[node.name] = Island(
                    node.name, node.op_type, f"overflow: reads {read} beyond the fp16 range"
                )
    return islands


def _first_divergent(
    graph: onnx.GraphProto, reference: _Reference, errors: dict[str, float], tolerance: float
) -> list[onnx.NodeProto]:
    """Nodes with a diverging output while every float input they read is within `tolerance`."""
    found = []
    for node in graph.node:
        outputs = [errors.get(name, 0.0) for name in node.output]
        if not outputs or max(outputs) <= tolerance:
            continue
        if all(errors.get(name, 0.0) <= tolerance for name in _float_inputs(node, reference)):
            found.append(node)
    return found


class _Search:
    def __init__(
        self,
        model: onnx.ModelProto,
        feeds: Sequence[Feed],
        tolerance: float,
        scratch: Path,
        base_dir: Path | None = None,
    ) -> None:
        fp16.name_nodes(model.graph)  # islands are kept by name
        self.model = model
        self.base_dir = base_dir
        self.feeds = feeds
        self.tolerance = tolerance
        self.base = embedding_nodes(model.graph)
        self.outputs = [o.name for o in model.graph.output]
        self.reference = _Reference(model, feeds, scratch, base_dir)
        self.rounds = 0

    def convert(self, keep: set[str]) -> onnx.ModelProto:
        """A copy converted: only the graph is copied where the weights are external."""
        model = copy.deepcopy(self.model)
        return fp16.convert(model, FP32_OPS, self.base | keep, self.base_dir)

    def check(self, keep: set[str]) -> tuple[onnx.ModelProto, dict[str, float], float]:
        """The converted graph, each tensor's error, and the worst output error."""
        self.rounds += 1
        converted = self.convert(keep)
        errors = self.reference.errors(each_tensors(converted, self.feeds, self.base_dir))
        worst = max(errors.get(name, float("inf")) for name in self.outputs)
        return converted, errors, worst


def _grow(
    graph: onnx.GraphProto, search: _Search, islands: dict[str, Island], errors: dict[str, float]
) -> list[Island]:
    """The next nodes to keep in fp32: the first diverging ones, or, where those are fp32
    already and still diverge, the nodes that feed them (the error came in rounded)."""

    def eligible(node: onnx.NodeProto) -> bool:
        fixed = node.op_type in FP32_OPS or node.op_type in fp16.SHAPE_OPS
        return not fixed and node.name not in islands and node.name not in search.base

    frontier = _first_divergent(graph, search.reference, errors, search.tolerance)
    fresh = []
    for node in frontier:
        if eligible(node):
            error = max(errors.get(name, 0.0) for name in node.output)
            reason = f"error {error:.3g} vs fp32 > {search.tolerance:g}"
            fresh.append(Island(node.name, node.op_type, reason))
    if fresh:
        return fresh
    producers = {output: node for node in graph.node for output in node.output}
    for node in frontier:
        for name in _float_inputs(node, search.reference):
            producer = producers.get(name)
            if (
                producer is not None
                and eligible(producer)
                and producer.name not in {island.node for island in fresh}
            ):
                reason = f"feeds {node.name}, which diverges from fp32 when it reads fp16"
                fresh.append(Island(producer.name, producer.op_type, reason))
    return fresh


def guard_fp16(
    model: onnx.ModelProto,
    feeds: Sequence[Feed],
    tolerance: float,
    base_dir: Path | None = None,
) -> GuardResult:
    """`model` (fp32, left unchanged but for node names) converted to fp16 with the fp32
    islands that keep its outputs finite and within `tolerance` of fp32 on `feeds`; weights in
    external data are read from `base_dir`, the graph's folder."""
    if not feeds:
        raise BuildError("the fp16 guard needs at least one calibration input")
    with tempfile.TemporaryDirectory(prefix="sdtrt-fp16-guard-") as scratch:
        return _guarded(model, feeds, tolerance, Path(scratch), base_dir)


def _guarded(
    model: onnx.ModelProto,
    feeds: Sequence[Feed],
    tolerance: float,
    scratch: Path,
    base_dir: Path | None,
) -> GuardResult:
    search = _Search(model, feeds, tolerance, scratch, base_dir)
    islands = {
        name: island
        for name, island in _overflow_islands(model.graph, search.reference).items()
        if name not in search.base
    }
    proved = set(islands)
    converted, errors, worst = search.check(set(islands))
    while worst > tolerance:
        if search.rounds >= MAX_ROUNDS:
            raise BuildError(
                f"the fp16 guard found no fp32 islands that bring {model.graph.name or 'the graph'}"
                f" within {tolerance:g} of fp32 in {MAX_ROUNDS} rounds (worst output error "
                f"{worst:.3g}); build it with --precision fp32"
            )
        fresh = _grow(model.graph, search, islands, errors)
        if not fresh:
            raise BuildError(
                f"the fp16 guard cannot bring the outputs within {tolerance:g} of fp32 (worst "
                f"{worst:.3g}, no node left to keep in fp32); build with --precision fp32"
            )
        islands.update((island.node, island) for island in fresh)
        converted, errors, worst = search.check(set(islands))
    searched = [name for name in islands if name not in proved]
    if len(searched) <= MAX_PRUNE:
        for name in reversed(searched):
            trial = set(islands) - {name}
            candidate, _, candidate_worst = search.check(trial)
            if candidate_worst <= tolerance:
                del islands[name]
                converted, worst = candidate, candidate_worst
    for island in islands.values():
        log.info("fp16 guard keeps %s (%s) in fp32: %s", island.node, island.op, island.reason)
    return GuardResult(converted, tuple(islands.values()), worst, search.rounds)
