"""What exporting and building one network holds in memory, checked before it starts.

A build holds a network's weights about once at a time. While the network is exported, its torch
module is loaded (with the modules of the networks still to come), and the graph takes the
weights straight from it: beside it in a file for big graphs, a second copy only for graphs under
protobuf's 2 GB. Once exported (and torch's outputs for its validation taken), the module is let
go, and the backend holds its own copy while it builds and runs the engine once. A network that
cannot fit is refused up front with the memory it needs, instead of being killed by the kernel
halfway through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtrt.engine.weights.initializers import INLINE_LIMIT
from sdtrt.errors import BuildError

GIB = 1024**3
# The torch module each component is exported from.
MODULE_OF = {
    "text_encoder": "text_encoder",
    "text_encoder_2": "text_encoder_2",
    "text_encoder_3": "text_encoder_3",
    "unet": "unet",
    "transformer": "transformer",
    "vae_decoder": "vae",
    "vae_encoder": "vae",
}
# Measured (2-core Intel Xeon, December 2026), peak resident memory of whole fp32 builds on ONNX
# Runtime: SD 1.5 5.0 GiB (its UNet's 3.2 GiB of weights), SDXL 13.1 GiB (9.6 GiB). Exporting a
# network holds its module, the modules still to come, and torch's activations as it traces the
# network and takes its reference outputs (SDXL's UNet at 1024x1024: 3.2 GiB beside its module
# and the VAE's, libraries included). Building holds the backend's copies of the weights: ONNX
# Runtime's one (optimising without packing them for its kernels, then running the engine once);
# OpenVINO's in bf16 1.5 while its compiled models held fp32 weights (SDXL's UNet: 14.4 GiB beside
# 1.4 GiB of libraries), less since they keep the fp16 ones (the whole SDXL bf16 build: 12.9 GiB).
# A module loaded in 16 bits (SD 3's T5 in a bf16 build) counts its 16-bit bytes throughout.
EXPORT_ACTIVATIONS = 0.35  # per byte of the network's weights, beside the modules
BACKEND_COPIES = 1.5
# The fp16 guard also runs the fp32 graph and fp16 candidates tensor by tensor: a guarded SD
# 1.5 build peaked at 10.5 GiB, 2.6 copies of its UNet beside the VAE and the libraries.
GUARDED_COPIES = 3.0
# A w8a8 UNet is quantized by NNCF, which runs the fp32 engine over the calibration inputs with
# its statistics taken from every layer: a whole SD 1.5 w8a8 build peaked at 13.5 GiB, 3.6 of its
# UNet's weights beside the libraries, and SDXL's at 1024x1024 passed 24 GiB there (killed for
# memory after 2.5 copies of its 9.6 GiB, still growing).
QUANTIZE_COPIES = 3.6
LIBRARIES_BYTES = 2 * GIB
MEASURED_SD15 = int(5.0 * GIB)
MEASURED_SD15_GUARDED = int(10.5 * GIB)


def _bytes(module: Any) -> int:
    """A module's weights as loaded: fp32, or 16 bits (export/lean.py)."""
    return sum(int(p.numel()) * p.element_size() for p in module.parameters())


@dataclass(frozen=True)
class MemoryNeed:
    component: str
    peak: int  # bytes the build of the component peaks at
    weights: int  # bytes of its weights as loaded (fp32, or 16 bits: export/lean.py)


def build_memory_needed(
    loaded: Any, components: tuple[str, ...], guarded: bool = False, quantized: str | None = None
) -> dict[str, MemoryNeed]:
    """Per component: what its build holds at its peak, with the torch modules of the
    components built after it still loaded (see release_modules); `guarded`: an fp16 build
    with the fp16 guard; `quantized`: the component a w8a8 build quantizes."""
    sizes = {
        name: _bytes(module)
        for name in set(MODULE_OF.values())
        if (module := getattr(loaded, name, None)) is not None
    }
    deferred = loaded.deferred_sizes()
    sizes.update(deferred)

    def modules(names: tuple[str, ...]) -> int:
        """The modules held while `names` are still to be built: those loaded now."""
        return sum(sizes[m] for m in {MODULE_OF[c] for c in names} if m not in deferred)

    needs = {}
    for index, component in enumerate(components):
        weights = sizes[MODULE_OF[component]]
        inline = weights if weights < INLINE_LIMIT else 0
        own = weights if MODULE_OF[component] in deferred else 0  # loaded for its turn
        exporting = modules(components[index:]) + own + inline + EXPORT_ACTIVATIONS * weights
        copies = GUARDED_COPIES if guarded else BACKEND_COPIES
        if component == quantized:
            copies = QUANTIZE_COPIES
        building = modules(components[index + 1 :]) + copies * weights
        peak = int(LIBRARIES_BYTES + max(exporting, building))
        needs[component] = MemoryNeed(component, peak, weights)
    return needs


def fp32_bytes_on_disk(folder: Path) -> int:
    """The bytes a module's safetensors files in `folder` take once loaded in fp32, read from
    their headers alone (so a bf16 or fp16 folder counts double)."""
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="numpy") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += 4 * math.prod(weights.get_slice(key).get_shape())
    return total


def check_load_memory(
    folder: Path,
    parts: tuple[str, ...],
    model: str,
    total: int | None = None,
    bytes_per_weight: int = 4,
) -> None:
    """Refuse, before any is loaded, modules whose weights (fp32, or 2 bytes each loaded in 16
    bits) with the libraries cannot fit in this machine's memory (`total`, else all of its RAM):
    a build loads them together."""
    import psutil

    total = psutil.virtual_memory().total if total is None else total
    sizes = {p: fp32_bytes_on_disk(folder / p) * bytes_per_weight // 4 for p in parts}
    need = LIBRARIES_BYTES + sum(sizes.values())
    kind = "fp32" if bytes_per_weight == 4 else "16 bits"
    if need > total:
        biggest = max(sizes, key=lambda part: sizes[part])
        raise BuildError(
            f"loading {model}'s networks in {kind} needs about {need / GIB:.0f} GiB of memory "
            f"({biggest}: {sizes[biggest] / GIB:.1f} GiB); this machine has {total / GIB:.0f} "
            "GiB. Leave a network out with --components, or build on a machine with more memory"
        )


def check_build_memory(need: MemoryNeed, model: str, total: int | None = None) -> None:
    """Refuse a build whose peak this machine's memory (`total`, else all of its RAM) cannot
    hold, before its export starts."""
    import psutil

    total = psutil.virtual_memory().total if total is None else total
    if need.peak > total:
        raise BuildError(
            f"building the {need.component} of {model} needs about {need.peak / GIB:.0f} GiB of "
            f"memory ({need.weights / GIB:.1f} GiB of weights, held by torch and then by "
            f"the backend, beside the modules still to be built and the libraries); this "
            f"machine has {total / GIB:.0f} GiB. Build on a machine with more memory: the "
            "engine directory it writes runs here"
        )


def release_modules(loaded: Any, remaining: tuple[str, ...]) -> None:
    """Drop the torch modules none of the `remaining` components is exported from."""
    import gc

    needed = {MODULE_OF[c] for c in remaining}
    for attribute in set(MODULE_OF.values()) - needed:
        if getattr(loaded, attribute, None) is not None:
            setattr(loaded, attribute, None)
    gc.collect()
