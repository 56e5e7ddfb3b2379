"""What exporting and building one network holds in memory, checked before it starts.

A build keeps a network's weights several times over at its peak: the torch module (needed until
the engine has been checked against it), the exporter's serialised copy, the ONNX graph, and the
backend's own copy while it optimises. A network that cannot fit is refused up front with the
memory it needs, instead of being killed by the kernel halfway through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdtrt.errors import BuildError

GIB = 1024**3
# The torch module each component is exported from.
MODULE_OF = {
    "text_encoder": "text_encoder",
    "text_encoder_2": "text_encoder_2",
    "unet": "unet",
    "vae_decoder": "vae",
    "vae_encoder": "vae",
}
# A build's peak beyond the torch modules it holds and the libraries' own, per byte of fp32
# weights of the network being built. Measured: SD 1.5 (3.2 GiB of UNet weights) peaks at 13.4
# GiB of resident memory while its UNet is built with the VAE still loaded, about 2.6 copies of
# the UNet beyond the modules and ~1.5 GiB of libraries; 3 and 2 GiB keep a margin.
EXTRA_COPIES = 3.0
# The fp16 guard also keeps the fp32 graph's tensors and an fp16 copy: a guarded SD 1.5 build
# measured 24.2 GB (22.5 GiB), about 5.3 copies.
GUARDED_EXTRA_COPIES = 5.5
LIBRARIES_BYTES = 2 * GIB


def _fp32_bytes(module: Any) -> int:
    return 4 * sum(int(p.numel()) for p in module.parameters())


@dataclass(frozen=True)
class MemoryNeed:
    component: str
    peak: int  # bytes the build of the component peaks at
    weights: int  # bytes of its fp32 weights
    copies: float  # of the weights, the torch module's included


def build_memory_needed(
    loaded: Any, components: tuple[str, ...], guarded: bool = False
) -> dict[str, MemoryNeed]:
    """Per component: what its build holds at its peak, with the torch modules of the
    components built after it still loaded (see release_modules); `guarded`: an fp16 build
    with the fp16 guard."""
    copies = GUARDED_EXTRA_COPIES if guarded else EXTRA_COPIES
    sizes = {
        name: _fp32_bytes(module)
        for name in set(MODULE_OF.values())
        if (module := getattr(loaded, name, None)) is not None
    }
    needs = {}
    for index, component in enumerate(components):
        resident = sum(sizes[m] for m in {MODULE_OF[c] for c in components[index:]})
        weights = sizes[MODULE_OF[component]]
        peak = int(LIBRARIES_BYTES + resident + copies * weights)
        needs[component] = MemoryNeed(component, peak, weights, copies + 1)
    return needs


def check_build_memory(need: MemoryNeed, model: str, total: int | None = None) -> None:
    """Refuse a build whose peak this machine's memory (`total`, else all of its RAM) cannot
    hold, before its export starts."""
    import psutil

    total = psutil.virtual_memory().total if total is None else total
    if need.peak > total:
        raise BuildError(
            f"building the {need.component} of {model} needs about {need.peak / GIB:.0f} GiB of "
            f"memory ({need.weights / GIB:.1f} GiB of fp32 weights, held about "
            f"{need.copies:.0f} times over while it is exported, built and checked against "
            f"torch); this machine has {total / GIB:.0f} GiB. Build on a machine with more "
            "memory: the engine directory it writes runs here"
        )


def release_modules(loaded: Any, remaining: tuple[str, ...]) -> None:
    """Drop the torch modules none of the `remaining` components is exported from."""
    import gc

    needed = {MODULE_OF[c] for c in remaining}
    for attribute in set(MODULE_OF.values()) - needed:
        if getattr(loaded, attribute, None) is not None:
            setattr(loaded, attribute, None)
    gc.collect()
