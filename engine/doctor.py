"""`sdtrt doctor`: what this machine has, and which backends can run here (and if not, why)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import dataclass

from sdtrt import __version__
from sdtrt.engine.backends import BACKENDS, auto_choice, auto_precision
from sdtrt.engine.host import cpu_flags, has_bf16, has_int8_dot, isa_features
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.errors import SdtrtError


@dataclass(frozen=True)
class Finding:
    topic: str
    value: str
    ok: bool = True


def installed_version(distribution: str) -> str | None:
    """The installed release of a distribution (pip package), None where it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_findings() -> list[Finding]:
    from sdtrt.engine import cuda

    try:
        found = cuda.probe()
        if found.problem is not None:  # CUDA's own error, e.g. a driver older than the runtime
            return [Finding("CUDA", found.problem, False)]
        if found.count == 0:
            return [Finding("CUDA", "no NVIDIA GPU or driver visible", False)]
        versions = cuda.versions()
        findings = [
            Finding("CUDA driver", cuda.format_version(versions["driver"])),
            Finding("CUDA runtime", cuda.format_version(versions["runtime"])),
        ]
        for index in range(found.count):
            gpu = cuda.device_properties(index)
            memory = gpu["total_memory"] / 2**30
            detail = (
                f"{gpu['name']}, compute capability {gpu['compute_capability']}, {memory:.0f} GiB"
            )
            findings.append(Finding(f"GPU {index}", detail))
        return findings
    except SdtrtError as error:
        return [Finding("CUDA", str(error), False)]


def diagnose() -> list[Finding]:
    numpy = installed_version("numpy")
    findings = [
        Finding("sdtrt", __version__),
        Finding("Python", f"{sys.version.split()[0]} ({platform.platform()})"),
        Finding("numpy", numpy or "not installed", numpy is not None),
        _cpu_finding(),
    ]
    ort = installed_version("onnxruntime") or installed_version("onnxruntime-gpu")
    if ort and importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        providers = ", ".join(onnxruntime.get_available_providers())
        findings.append(Finding("onnxruntime", f"{ort} (providers: {providers})"))
    else:
        findings.append(Finding("onnxruntime", "not installed", False))
    if installed_version("onnxruntime") and installed_version("onnxruntime-gpu"):
        clash = (
            "onnxruntime and onnxruntime-gpu are both installed and overwrite one module; keep "
            "one: `pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu`"
        )
        findings.append(Finding("onnxruntime packages", clash, False))
    findings += _cuda_findings()
    tensorrt = (
        installed_version("tensorrt")
        or installed_version("tensorrt-cu12")
        or installed_version("tensorrt-cu13")
    )
    findings.append(Finding("TensorRT", tensorrt or "not installed", tensorrt is not None))
    for name, backend in BACKENDS.items():
        try:
            findings.append(Finding(f"backend {name}", f"usable ({backend.version()})"))
        except SdtrtError as error:
            findings.append(Finding(f"backend {name}", f"not usable: {error}", False))
    for precision in Precision:
        default = precision is Precision.AUTO  # the default build: backend and precision picked
        topic = "default build (auto)" if default else f"backend auto, {precision.value}"
        try:
            choice = auto_choice(BuildOptions(precision=precision))
            if default:
                picked = auto_precision(BACKENDS[choice.backend])
                value = (
                    f"picks {choice.backend} in {picked.precision.value}: {choice.reason}; "
                    f"{picked.reason}"
                )
            else:
                value = f"picks {choice.backend}: {choice.reason}"
            findings.append(Finding(topic, value))
        except SdtrtError as error:
            findings.append(Finding(topic, str(error), False))
    return findings


def _cpu_finding() -> Finding:
    """The CPU's instruction sets that decide a CPU backend's kernels, and whether bf16 and int8
    dot products (what w8a8 runs on) are there."""
    features = isa_features(cpu_flags())
    bf16 = has_bf16(features)
    int8 = has_int8_dot(features)
    listed = ", ".join(features) or "unknown"
    return Finding(
        "CPU",
        f"{platform.machine()}: {listed}; bf16 compute: {'yes' if bf16 else 'no'}; "
        f"int8 dot products: {'yes' if int8 else 'no'}",
    )
