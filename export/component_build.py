"""One network of a build: exported, built by the backend and checked against its torch module,
or reused when nothing it depends on changed (its build key)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from sdtrt import __version__
from sdtrt.engine.artifact import ArtifactWriter
from sdtrt.engine.base import Backend
from sdtrt.engine.graph_style import GraphStyle
from sdtrt.engine.layout import ONNX_NAME, RECORD_NAME, REFERENCE_NAME, WEIGHT_MAP
from sdtrt.engine.manifest import FORMAT_VERSION, ComponentRecord, Fp32Island
from sdtrt.engine.options import BuildOptions, ExportOptions, Precision
from sdtrt.engine.ranges import BuildRanges
from sdtrt.engine.tensors import ComponentIO
from sdtrt.engine.weights.lora import LORA_COMPONENTS
from sdtrt.export.calibration import CalibrationSet, at_batch, calibration_key
from sdtrt.export.fp16.guard import GuardOptions, calibration_feeds
from sdtrt.export.lora_merge import record_lora_weights
from sdtrt.export.memory import MemoryNeed, check_build_memory
from sdtrt.export.onnx_export import export_onnx
from sdtrt.export.precision import component_precision
from sdtrt.export.specs import ComponentSpec
from sdtrt.export.validate import validate
from sdtrt.tolerances import EXPORT_TOLERANCE, FP16_GUARD_RELATIVE

log = logging.getLogger(__name__)

# Called as progress(component, stage) with stage one of: export, calibrate (w8a8's UNet),
# optimize, validate, done, reused.
Progress = Callable[[str, str], None]


def build_key(parts: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ComponentBuild:
    """What every component of one build shares, and how each is built."""

    writer: ArtifactWriter
    backend: Backend
    backend_version: str
    ranges: BuildRanges
    build_options: BuildOptions
    export_options: ExportOptions
    progress: Progress
    calibration_timesteps: tuple[float, ...] = ()  # noise levels the fp16 guard compares at
    memory: Mapping[str, MemoryNeed] = field(default_factory=dict)  # checked before a build
    model_name: str = ""
    float_precision: Precision = Precision.FP32  # w8a8's networks other than the UNet
    calibrate: Callable[[], CalibrationSet] | None = None  # w8a8: the UNet's real inputs

    def component(self, spec: ComponentSpec, sources: list[str]) -> ComponentRecord:
        """The built component: reused when nothing it depends on changed, else built."""
        options = self.build_options
        # With the guard the VAE decoder is searched for fp32 islands instead of kept fp32 whole.
        precision = component_precision(
            spec.name, options.precision, options.fp16_vae or options.guarded, self.float_precision
        )
        io = spec.io(self.ranges)
        style = self.backend.graph_style
        key = build_key(
            {
                "format": FORMAT_VERSION,
                "sdtrt": __version__,
                "component": spec.name,
                "sources": sources,
                "export": self.export_options.opset,
                "backend": [self.backend.name, self.backend_version],
                "target": self.backend.target(),
                "precision": precision.value,
                "engine": options.model_dump(
                    mode="json",
                    include={"static", "workspace_gib", "optimization_level", "refittable"},
                ),
                "io": io.model_dump(mode="json"),
                # Only when on, so that the keys of unguarded builds stay as they were.
                **({"fp16_guard": FP16_GUARD_RELATIVE} if self.build_options.guarded else {}),
                **({"calibration": calibration_key()} if precision is Precision.W8A8 else {}),
                # Only when not plain ONNX, likewise.
                **({"graph": style.model_dump()} if style != GraphStyle() else {}),
            }
        )
        reused = self.writer.reuse(spec.name, key)
        if reused is not None:
            self.progress(spec.name, "reused")
            return reused
        if spec.name in self.memory:
            check_build_memory(self.memory[spec.name], self.model_name)
        record = self._build(spec, precision, io, key)
        self.writer.finish_component(record)
        self.progress(spec.name, "done")
        return record

    def _build(
        self, spec: ComponentSpec, precision: Precision, io: ComponentIO, key: str
    ) -> ComponentRecord:
        started = time.perf_counter()
        folder = self.writer.component_dir(spec.name)
        onnx_path = folder / ONNX_NAME
        rng = np.random.default_rng(0)
        calibration: CalibrationSet | None = None
        if precision is Precision.W8A8 and self.calibrate is not None:
            self.progress(spec.name, "calibrate")
            calibration = self.calibrate()
        self.progress(spec.name, "export")
        trace_inputs = spec.sample_inputs(spec.trace_point(self.ranges), rng)
        guard = None
        if self.build_options.guarded and precision is Precision.FP16:
            feeds = calibration_feeds(spec, self.ranges, self.calibration_timesteps)
            guard = GuardOptions(feeds, FP16_GUARD_RELATIVE, folder / REFERENCE_NAME)
        exported = export_onnx(
            spec,
            trace_inputs,
            onnx_path,
            opset=self.export_options.opset,
            precision=precision,
            guard=guard,
            style=self.backend.graph_style,
        )
        if spec.name in LORA_COMPONENTS:
            record_lora_weights(spec.module(), onnx_path, folder / WEIGHT_MAP)
        opt_point = spec.opt_point(self.ranges)
        if calibration is None:
            inputs = spec.sample_inputs(opt_point, rng)
        else:
            # Random inputs fall outside the calibrated ranges: validate on a real one instead,
            # at the optimum batch (a --static build's own compile serves that shape).
            middle = calibration.held_out[len(calibration.held_out) // 2]
            inputs = at_batch(middle, opt_point["batch"])
        self.progress(spec.name, "optimize")
        # The backend sees this network's precision (a VAE may stay fp32 in a bf16 build).
        options = self.build_options.model_copy(update={"precision": precision})
        engine_name, settings = self.backend.build(
            onnx_path,
            folder,
            io,
            options,
            cache_dir=self.writer.output.parent,
            calibration=calibration.feeds if calibration is not None else (),
        )
        self.progress(spec.name, "validate")
        tolerance = EXPORT_TOLERANCE[precision]
        with self.backend.load(spec.name, folder / engine_name, onnx_path, io, settings) as engine:
            report = validate(spec, engine, inputs, tolerance)
        for item in report:
            log.info(
                "%s %s: max abs error %.3g, relative %.3g (allowed %.3g)",
                spec.name,
                item.output,
                item.max_abs_error,
                item.relative_error,
                item.tolerance,
            )
        files = {
            f"{spec.name}/{p.name}": p.stat().st_size
            for p in sorted(folder.iterdir())
            if p.is_file() and p.name != RECORD_NAME
        }
        return ComponentRecord(
            name=spec.name,
            onnx=f"{spec.name}/{ONNX_NAME}",
            engine=f"{spec.name}/{engine_name}",
            files=files,
            backend=self.backend.name,
            backend_version=self.backend_version,
            precision=precision,
            io=io,
            settings=settings,
            validation=report,
            build_key=key,
            build_seconds=round(time.perf_counter() - started, 3),
            fp32_islands=[
                Fp32Island(node=i.node, op=i.op, reason=i.reason) for i in exported.islands
            ],
            reference_onnx=f"{spec.name}/{REFERENCE_NAME}" if guard is not None else None,
            cleanup=exported.cleanup,
        )
