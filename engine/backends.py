"""The one registry of backends: the only module that names their classes. Everything else asks
it for a backend by name (or for `auto`'s pick) and goes through the Backend protocol."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdtrt.engine.auto import AUTO, Choice, PrecisionChoice, pick, pick_precision, probe
from sdtrt.engine.base import Backend, Engine
from sdtrt.engine.host import cpu_flags
from sdtrt.engine.manifest import ComponentRecord, check_component_files
from sdtrt.engine.onnxruntime.cpu import OnnxRuntimeBackend
from sdtrt.engine.onnxruntime.cuda import OnnxRuntimeCudaBackend
from sdtrt.engine.openvino.cpu import OpenVinoBackend
from sdtrt.engine.openvino.devices import OpenVinoGpuBackend, OpenVinoNpuBackend
from sdtrt.engine.options import VAE_FOLLOWS_BY_DEFAULT, BuildOptions, Precision
from sdtrt.engine.tensorrt.backend import TensorRtBackend
from sdtrt.errors import InputError

log = logging.getLogger(__name__)

BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        OnnxRuntimeBackend(),
        OnnxRuntimeCudaBackend(),
        TensorRtBackend(),
        OpenVinoBackend(),
        OpenVinoGpuBackend(),
        OpenVinoNpuBackend(),
    )
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError as error:
        raise InputError(
            f"unknown backend '{name}'; choose one of: {', '.join(sorted([*BACKENDS, AUTO]))}"
        ) from error


def auto_choice(options: BuildOptions | None = None) -> Choice:
    """What `--backend auto` picks on this machine for a build with `options` (default: one in
    `--precision auto`), and why: the fastest backend that runs here and can make that build."""
    options = BuildOptions() if options is None else options
    available = probe({name: _can_build(b, options) for name, b in BACKENDS.items()})
    return pick(available, options.precision.value)


def _can_build(backend: Backend, options: BuildOptions) -> Callable[[], object]:
    """A check that raises, in one line, where `backend` cannot make the build here."""

    def check() -> object:
        version = backend.version()
        backend.check_build(options)  # its own words first: it knows the machine
        check_precision(backend, options.precision)
        return version

    return check


def _spoken(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def check_precision(backend: Backend, precision: Precision) -> None:
    """InputError, naming the backends that compute in `precision`, where `backend` does not
    (`auto` is any backend's own)."""
    if precision is Precision.AUTO or precision in backend.precisions:
        return
    others = [name for name, b in BACKENDS.items() if precision in b.precisions]
    own = [p.value for p in Precision if p in backend.precisions]
    raise InputError(
        f"--precision {precision.value} is for --backend {_spoken(others)}; {backend.name} "
        f"computes in {_spoken(own)}"
    )


def auto_precision(backend: Backend) -> PrecisionChoice:
    """What `--precision auto` builds in on `backend` here, and why."""
    return pick_precision(
        backend.name,
        backend.device_kind,
        backend.float_precision(),
        backend.precisions,
        cpu_flags(),
    )


@dataclass(frozen=True)
class ResolvedBuild:
    """A build's backend, and its options with `auto` resolved (the backend and precision
    named); `picked`: for each of those `auto` chose, what and why, as the manifest keeps it."""

    backend: Backend
    options: BuildOptions
    picked: dict[str, str]


def resolve_build(options: BuildOptions) -> ResolvedBuild:
    """The backend a build runs on and the precision it builds in (`auto` resolved here), checked
    to be able to make it: the backend's own refusals first (they know the machine), then the
    precisions it lacks."""
    picked = {}
    if options.backend == AUTO:
        choice = auto_choice(options)
        # Said aloud where the build asked made auto pass the fastest backend here by.
        passed_by = choice.backend != auto_choice().backend
        log.log(
            logging.WARNING if passed_by else logging.INFO,
            "backend auto: %s (%s)",
            choice.backend,
            choice.reason,
        )
        backend = BACKENDS[choice.backend]
        picked["backend"] = f"{choice.backend}: {choice.reason}"
    else:
        backend = get_backend(options.backend)
    named = {"backend": backend.name}
    if options.precision is Precision.AUTO:
        precision = auto_precision(backend)
        log.info("precision auto: %s (%s)", precision.precision.value, precision.reason)
        picked["precision"] = f"{precision.precision.value}: {precision.reason}"
        named["precision"] = precision.precision
        if options.fp16_guard and precision.precision is not Precision.FP16:
            raise InputError(
                "--fp16-guard checks fp16 graphs; add --precision fp16 (auto picked "
                f"{precision.precision.value} on {backend.name} here)"
            )
    # Validated again: what holds for `auto` may not for what it resolved to (--fp16-guard).
    options = BuildOptions.model_validate({**options.model_dump(), **named})
    if options.fp16_vae is None:  # the manifest says what the VAE was built in
        follows = options.precision in VAE_FOLLOWS_BY_DEFAULT
        options = options.model_copy(update={"fp16_vae": follows})
    backend.check_build(options)
    check_precision(backend, options.precision)
    return ResolvedBuild(backend, options, picked)


def load_component(
    directory: Path, record: ComponentRecord, weights: Mapping[str, np.ndarray] | None = None
) -> Engine:
    """Open one built network of an engine directory, after checking its files are whole;
    with `weights`, those initializers replaced (LoRA switching)."""
    check_component_files(directory, record)
    return get_backend(record.backend).load(
        record.name,
        directory / record.engine,
        directory / record.onnx,
        record.io,
        record.settings,
        weights,
    )
