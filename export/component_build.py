"""One network of a build: exported, built by the backend and checked against its torch module,
or reused when nothing it depends on changed (its build key)."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
from sdtrt.errors import BuildError, first_line
from sdtrt.export.calibration import CalibrationSet, at_batch, calibration_key
from sdtrt.export.fp16.guard import GuardOptions, Island, calibration_feeds
from sdtrt.export.lora_merge import weight_digests, write_lora_map
from sdtrt.export.memory import MemoryNeed, check_build_memory
from sdtrt.export.onnx_export import convert_graph, converts, export_graph, fp32_path
from sdtrt.export.precision import component_precision, stores_fp16_weights
from sdtrt.export.specs import ComponentSpec
from sdtrt.export.validate import torch_reference, validate
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

    def component(
        self, spec: ComponentSpec, sources: list[str], release: Callable[[], None]
    ) -> ComponentRecord:
        """The built component: reused when nothing it depends on changed, else built.
        `release` lets go of the torch modules no network after this one needs, once this one
        is exported."""
        options = self.build_options
        # With the guard the VAE decoder is searched for fp32 islands instead of kept fp32 whole.
        precision = component_precision(
            spec.name, options.precision, options.reduced_vae, self.float_precision
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
        try:
            record = self._build(spec, precision, io, key, release)
        except OSError as error:  # a full disk, most often: the build can resume once it is not
            raise BuildError(
                f"building the {spec.name} failed writing its files ({first_line(error)}); "
                f"free space where {self.writer.output} is built, then run the build again: it "
                "resumes from the networks it finished"
            ) from error
        self.writer.finish_component(record)
        self.progress(spec.name, "done")
        return record

    def _build(
        self,
        spec: ComponentSpec,
        precision: Precision,
        io: ComponentIO,
        key: str,
        release: Callable[[], None],
    ) -> ComponentRecord:
        started = time.perf_counter()
        folder = self.writer.component_dir(spec.name)
        onnx_path = folder / ONNX_NAME
        calibration: CalibrationSet | None = None
        if precision is Precision.W8A8 and self.calibrate is not None:
            self.progress(spec.name, "calibrate")
            calibration = self.calibrate()
        self.progress(spec.name, "export")
        rng = np.random.default_rng(0)
        trace_inputs = spec.sample_inputs(spec.trace_point(self.ranges), rng)
        inputs = self._validation_inputs(spec, rng, calibration)
        expected = torch_reference(spec, inputs)  # while the module is loaded
        guard = None
        if self.build_options.guarded and precision is Precision.FP16:
            feeds = calibration_feeds(spec, self.ranges, self.calibration_timesteps)
            guard = GuardOptions(feeds, FP16_GUARD_RELATIVE, folder / REFERENCE_NAME)
        style = self.backend.graph_style
        islands: tuple[Island, ...] = ()
        with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as scratch:
            converted = converts(precision, style)
            source = fp32_path(onnx_path, guard, Path(scratch)) if converted else onnx_path
            cleanup = export_graph(
                spec,
                trace_inputs,
                source,
                self.export_options.opset,
                style,
                fp16_weights=stores_fp16_weights(precision),
            )
            digests = weight_digests(spec.module()) if spec.name in LORA_COMPONENTS else None
            # The torch module is not needed past this point: the conversion and the backend
            # get its memory (an SDXL UNet holds 10 GB).
            spec.release()
            release()
            if converted:
                islands = convert_graph(source, onnx_path, precision, guard, style)
        if digests is not None:
            write_lora_map(digests, onnx_path, folder / WEIGHT_MAP)
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
            report = validate(spec, engine, inputs, tolerance, expected)
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
            fp32_islands=[Fp32Island(node=i.node, op=i.op, reason=i.reason) for i in islands],
            reference_onnx=f"{spec.name}/{REFERENCE_NAME}" if guard is not None else None,
            cleanup=cleanup,
        )

    def _validation_inputs(
        self,
        spec: ComponentSpec,
        rng: np.random.Generator,
        calibration: CalibrationSet | None,
    ) -> dict[str, np.ndarray]:
        """Inputs of the real size to check the engine on: random at the optimum shapes, or
        a real one where the network was calibrated (random inputs fall outside its calibrated
        ranges), at the optimum batch (a --static build's own compile serves that shape)."""
        opt_point = spec.opt_point(self.ranges)
        if calibration is None:
            return spec.sample_inputs(opt_point, rng)
        middle = calibration.held_out[len(calibration.held_out) // 2]
        return at_batch(middle, opt_point["batch"])
