"""`sdtrt build`: model source -> ONNX per network -> engines -> a complete engine directory."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from sdtrt import __version__
from sdtrt.engine.artifact import RECORD_NAME, ArtifactWriter, write_json
from sdtrt.engine.backends import Backend, choose_backend
from sdtrt.engine.lora import LORA_COMPONENTS, LoraSource
from sdtrt.engine.lora_switch import WEIGHT_MAP
from sdtrt.engine.manifest import (
    FORMAT_VERSION,
    STABLE_DIFFUSION,
    ComponentRecord,
    Fp32Island,
    Manifest,
    SourceInfo,
)
from sdtrt.engine.onnxruntime_backend import cpu_flags
from sdtrt.engine.openvino_backend import float_precision
from sdtrt.engine.options import BuildOptions, GraphStyle, Precision
from sdtrt.engine.ranges import BuildRanges, resolve_ranges
from sdtrt.engine.tensors import ComponentIO
from sdtrt.errors import InputError
from sdtrt.export.calibration import (
    CalibrationSet,
    at_batch,
    calibration_key,
    calibration_set,
    check_calibratable,
)
from sdtrt.export.family import COMPONENT_FOLDERS, TOKENIZER_FOLDERS, Family, load_family
from sdtrt.export.fp16_guard import GuardOptions, calibration_feeds
from sdtrt.export.lora_merge import loras_digest, merge_loras, record_lora_weights
from sdtrt.export.memory import (
    MemoryNeed,
    build_memory_needed,
    check_build_memory,
    release_modules,
)
from sdtrt.export.onnx_export import DEFAULT_OPSET, export_onnx
from sdtrt.export.precision import component_precision
from sdtrt.export.sources import digest_files, open_source
from sdtrt.export.specs import ComponentSpec
from sdtrt.export.tokenizer_export import export_tokenizer
from sdtrt.export.validate import validate
from sdtrt.tolerances import EXPORT_TOLERANCE, FP16_GUARD_RELATIVE

log = logging.getLogger(__name__)

TOKENIZER_FILE_NAME = "tokenizer.json"  # in the tokenizer's own folder, as in the model
SCHEDULER_FILE = "scheduler/scheduler_config.json"
ONNX_NAME = "model.onnx"
REFERENCE_NAME = "reference_fp32.onnx"  # beside a guarded fp16 graph

# Called as progress(component, stage) with stage one of: export, calibrate (w8a8's UNet),
# optimize, validate, done, reused.
Progress = Callable[[str, str], None]


class ExportOptions(BaseModel):
    """Which networks to export and how; recorded in the manifest."""

    model_config = ConfigDict(frozen=True)

    # None: the model's own (its text encoders, the UNet, both VAE halves).
    components: tuple[str, ...] | None = None
    opset: int = DEFAULT_OPSET
    # Merged into the text encoder and UNet weights before export, in this order.
    loras: tuple[LoraSource, ...] = ()
    # A single-file .ckpt is a pickle, which runs code when loaded: only when the user says so.
    allow_pickle: bool = False


def _no_progress(component: str, stage: str) -> None:
    pass


def build_key(parts: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def build(
    model: str,
    output: Path,
    export_options: ExportOptions | None = None,
    build_options: BuildOptions | None = None,
    progress: Progress = _no_progress,
) -> Manifest:
    """Build (or bring up to date) the engine directory `output` for `model`."""
    export_options = export_options or ExportOptions()
    build_options = build_options or BuildOptions()
    unknown = sorted(set(export_options.components or ()) - set(COMPONENT_FOLDERS))
    if unknown:
        raise InputError(
            f"unknown component {', '.join(unknown)}; choose from {', '.join(COMPONENT_FOLDERS)}"
        )
    backend = choose_backend(build_options)
    # The manifest records the backend `auto` chose, not "auto".
    build_options = build_options.model_copy(update={"backend": backend.name})
    backend_version = backend.version()  # fails fast where the backend cannot run
    with open_source(model, export_options.allow_pickle) as source:
        loaded = load_family(source.path, source.name)
        components = export_options.components or loaded.default_components
        export_options = export_options.model_copy(update={"components": components})
        info = loaded.info()
        ranges = resolve_ranges(
            build_options, info.native_size, info.vae_scale_factor, backend.fixed_shapes
        )
        folders = (
            "model_index.json", "scheduler", "unet", "vae",
            *loaded.text_encoders, *(TOKENIZER_FOLDERS[e] for e in loaded.text_encoders),
        )  # fmt: skip
        digests = {folder: digest_files(source.path, [folder]) for folder in folders}
        if export_options.loras and loaded.family != STABLE_DIFFUSION:
            raise InputError(
                "LoRAs are merged into SD 1.x and 2.x models; SDXL LoRAs are not supported yet"
            )
        if export_options.loras:
            merge_loras(loaded, export_options.loras)
            lora_digest = loras_digest(export_options.loras)
            digests.update(
                {c: build_key({"files": digests[c], "loras": lora_digest}) for c in LORA_COMPONENTS}
            )
        # w8a8 calibrates the UNet on runs of the whole model: its text encoders and VAE stay
        # loaded until then, and its build depends on every part of the model.
        calibrated = build_options.precision is Precision.W8A8 and "unet" in components
        if calibrated:
            check_calibratable(loaded.makes_images_from_text)
        calibration_users = (*loaded.text_encoders, "unet", "vae_decoder") if calibrated else ()
        # Only what the asked networks are exported from stays loaded from here on.
        release_modules(loaded, (*components, *calibration_users))
        memory = build_memory_needed(loaded, components, build_options.guarded)
        with ArtifactWriter(output) as writer:
            # The cheap parts first, so that a bad tokenizer fails the build in seconds.
            tokenizers = {
                encoder: f"{TOKENIZER_FOLDERS[encoder]}/{TOKENIZER_FILE_NAME}"
                for encoder in loaded.text_encoders
            }
            for encoder, relative in tokenizers.items():
                export_tokenizer(
                    source.path / TOKENIZER_FOLDERS[encoder],
                    writer.staging / relative,
                    info.text_max_length,
                )
            (writer.staging / SCHEDULER_FILE).parent.mkdir(exist_ok=True)
            scheduler_config = loaded.scheduler_config()
            write_json(writer.staging / SCHEDULER_FILE, scheduler_config)
            job = _Job(
                writer, backend, backend_version, ranges, build_options, export_options, progress,
                calibration_timesteps=_calibration_timesteps(scheduler_config),
                memory=memory, model_name=info.name,
                float_precision=float_precision(cpu_flags())
                if build_options.precision is Precision.W8A8 else Precision.FP32,
                calibrate=functools.partial(
                    _calibrate, loaded, ranges, scheduler_config,
                    components[components.index("unet") :],
                ) if calibrated else None,
            )  # fmt: skip
            records = {}
            for index, name in enumerate(components):
                (spec,) = loaded.specs((name,))
                sources = [digests[f] for f in COMPONENT_FOLDERS[name]]
                if calibrated and name == "unet":
                    sources = [build_key(digests)]  # calibrated on runs of the whole model
                records[name] = job.component(spec, sources)
                del spec
                # The torch modules no network left needs: the UNet's export then has the
                # text encoders' memory (SDXL's second one is 2.8 GB) to itself.
                left = components[index + 1 :]
                release_modules(loaded, (*left, *(calibration_users if "unet" in left else ())))
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                sdtrt_version=__version__,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                source=SourceInfo(
                    kind=source.kind, ref=source.ref, content_hash=build_key(digests)
                ),
                model=info,
                ranges=ranges,
                build_options=build_options,
                export_options=export_options.model_dump(mode="json"),
                components=records,
                tokenizer=next(iter(tokenizers.values())),
                tokenizers=tokenizers,
                scheduler_config=SCHEDULER_FILE,
            )
            writer.commit(manifest)
    return manifest


def _calibrate(
    loaded: Family,
    ranges: BuildRanges,
    scheduler_config: dict[str, object],
    remaining: tuple[str, ...],
) -> CalibrationSet:
    """The UNet's inputs in diffusers' runs of the model (export/calibration.py); then the
    modules only the runs needed are released, before the UNet's export and quantization."""
    pipeline = loaded.text_to_image_pipeline(scheduler_config)
    calibration = calibration_set(pipeline, loaded.unet, ranges)
    del pipeline  # it holds the modules released next
    release_modules(loaded, remaining)
    return calibration


def _calibration_timesteps(scheduler_config: dict[str, object]) -> tuple[float, ...]:
    """Early, middle and late noise levels of the model's training schedule."""
    steps = scheduler_config.get("num_train_timesteps", 1000)
    last = float(steps if isinstance(steps, int) else 1000) - 1
    return (last, round(last / 2), round(last / 50))


@dataclass(frozen=True)
class _Job:
    """What every component of one build shares."""

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
            self.export_options.opset,
            precision,
            guard,
            self.backend.graph_style,
        )
        if spec.name in LORA_COMPONENTS:
            record_lora_weights(spec.module(), onnx_path, folder / WEIGHT_MAP)
        opt_point = spec.opt_point(self.ranges)
        if calibration is None:
            inputs = spec.sample_inputs(opt_point, rng)
        else:
            # Random inputs fall outside the calibrated ranges: validate on a real one instead,
            # at the optimum batch (a --static build's own compile serves that shape).
            inputs = at_batch(calibration.held_out[len(calibration.held_out) // 2],
                              opt_point["batch"])  # fmt: skip
        self.progress(spec.name, "optimize")
        # The backend sees this network's precision (a VAE may stay fp32 in a bf16 build).
        options = self.build_options.model_copy(update={"precision": precision})
        engine_name, settings = self.backend.build(
            onnx_path,
            folder,
            io,
            options,
            self.writer.output.parent,
            calibration.feeds if calibration is not None else (),
        )
        self.progress(spec.name, "validate")
        tolerance = EXPORT_TOLERANCE[precision]
        with self.backend.load(spec.name, folder / engine_name, onnx_path, io, settings) as engine:
            report = validate(spec, engine, inputs, tolerance)
        for item in report:
            log.info(
                "%s %s: max abs error %.3g, relative %.3g (allowed %.3g)",
                spec.name, item.output, item.max_abs_error, item.relative_error, item.tolerance,
            )  # fmt: skip
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
