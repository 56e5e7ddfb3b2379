"""`sdtrt build`: model source -> ONNX per network -> engines -> a complete engine directory."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from sdtrt import __version__
from sdtrt.engine.artifact import RECORD_NAME, ArtifactWriter, write_json
from sdtrt.engine.backends import Backend, get_backend
from sdtrt.engine.manifest import FORMAT_VERSION, ComponentRecord, Manifest, SourceInfo
from sdtrt.engine.options import BuildOptions
from sdtrt.engine.ranges import BuildRanges, resolve_ranges
from sdtrt.errors import InputError
from sdtrt.export.family import COMPONENT_FOLDERS, DEFAULT_COMPONENTS, load_family
from sdtrt.export.onnx_export import DEFAULT_OPSET, export_onnx
from sdtrt.export.sources import digest_files, open_source
from sdtrt.export.specs import ComponentSpec
from sdtrt.export.tokenizer_export import export_tokenizer
from sdtrt.export.validate import validate
from sdtrt.tolerances import EXPORT_FP32_RELATIVE

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer/tokenizer.json"
SCHEDULER_FILE = "scheduler/scheduler_config.json"
ONNX_NAME = "model.onnx"

# Called as progress(component, stage) with stage one of: export, optimize, validate, done, reused.
Progress = Callable[[str, str], None]


class ExportOptions(BaseModel):
    """Which networks to export and how; recorded in the manifest."""

    model_config = ConfigDict(frozen=True)

    components: tuple[str, ...] = DEFAULT_COMPONENTS
    opset: int = DEFAULT_OPSET


def _no_progress(component: str, stage: str) -> None:
    pass


def build_key(parts: dict[str, object]) -> str:
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
    unknown = sorted(set(export_options.components) - set(COMPONENT_FOLDERS))
    if unknown:
        raise InputError(
            f"unknown component {', '.join(unknown)}; choose from {', '.join(COMPONENT_FOLDERS)}"
        )
    backend = get_backend(build_options.backend)
    backend_version = backend.version()
    with open_source(model) as source:
        loaded = load_family(source.path, source.name)
        info = loaded.info()
        ranges = resolve_ranges(build_options, info.native_size, info.vae_scale_factor)
        folders = ("model_index.json", "scheduler", "tokenizer", "text_encoder", "unet", "vae")
        digests = {folder: digest_files(source.path, [folder]) for folder in folders}
        with ArtifactWriter(output) as writer:
            # The cheap parts first, so that a bad tokenizer fails the build in seconds.
            export_tokenizer(
                source.path / "tokenizer", writer.staging / TOKENIZER_FILE, info.text_max_length
            )
            (writer.staging / SCHEDULER_FILE).parent.mkdir(exist_ok=True)
            write_json(writer.staging / SCHEDULER_FILE, loaded.scheduler_config())
            records: dict[str, ComponentRecord] = {}
            for spec in loaded.specs(export_options.components):
                key = build_key(
                    {
                        "format": FORMAT_VERSION,
                        "sdtrt": __version__,
                        "component": spec.name,
                        "sources": [digests[f] for f in COMPONENT_FOLDERS[spec.name]],
                        "export": export_options.opset,
                        "backend": [backend.name, backend_version],
                        "precision": build_options.precision.value,
                        "io": spec.io(ranges).model_dump(mode="json"),
                    }
                )
                reused = writer.reuse(spec.name, key)
                if reused is not None:
                    progress(spec.name, "reused")
                    records[spec.name] = reused
                    continue
                record = _build_component(
                    spec,
                    writer,
                    backend,
                    backend_version,
                    ranges,
                    build_options,
                    export_options,
                    key,
                    progress,
                )
                writer.finish_component(record)
                progress(spec.name, "done")
                records[spec.name] = record
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                sdtrt_version=__version__,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                source=SourceInfo(
                    kind=source.kind,
                    ref=source.ref,
                    content_hash=build_key(digests),
                ),
                model=info,
                ranges=ranges,
                build_options=build_options,
                export_options=export_options.model_dump(mode="json"),
                components=records,
                tokenizer=TOKENIZER_FILE,
                scheduler_config=SCHEDULER_FILE,
            )
            writer.commit(manifest)
    return manifest


def _build_component(
    spec: ComponentSpec,
    writer: ArtifactWriter,
    backend: Backend,
    backend_version: str,
    ranges: BuildRanges,
    build_options: BuildOptions,
    export_options: ExportOptions,
    key: str,
    progress: Progress,
) -> ComponentRecord:
    started = time.perf_counter()
    folder = writer.component_dir(spec.name)
    rng = np.random.default_rng(0)
    progress(spec.name, "export")
    export_onnx(
        spec,
        spec.sample_inputs(spec.trace_point(ranges), rng),
        folder / ONNX_NAME,
        export_options.opset,
    )
    progress(spec.name, "optimize")
    engine_name, settings = backend.build(folder / ONNX_NAME, folder)
    progress(spec.name, "validate")
    io = spec.io(ranges)
    with backend.load(spec.name, folder / engine_name, folder / ONNX_NAME, io, settings) as engine:
        report = validate(
            spec, engine, spec.sample_inputs(spec.opt_point(ranges), rng), EXPORT_FP32_RELATIVE
        )
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
        backend=backend.name,
        backend_version=backend_version,
        precision=build_options.precision,
        io=io,
        settings=settings,
        validation=report,
        build_key=key,
        build_seconds=round(time.perf_counter() - started, 3),
    )
