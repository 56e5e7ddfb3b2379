"""The tables `sdtrt build`, `info` and `run` print."""

from __future__ import annotations

from rich.table import Table

from sdtrt.engine.manifest import Manifest
from sdtrt.runtime.pipeline import GenerationOutput


def components_table(manifest: Manifest) -> Table:
    """Each network: backend, precision, its worst error against torch, build time."""
    table = Table(title=f"{manifest.model.name} ({manifest.model.family})")
    for column in (
        "component",
        "backend",
        "precision",
        "max abs error",
        "relative error",
        "build s",
    ):
        table.add_column(
            column,
            justify="left" if column in ("component", "backend") else "right",
            no_wrap=column == "component",  # text_encoder and text_encoder_2 must stay apart
        )
    for record in manifest.components.values():
        worst = max(record.validation, key=lambda v: v.relative_error)
        table.add_row(
            record.name,
            f"{record.backend} {record.backend_version}",
            record.precision.value,
            f"{worst.max_abs_error:.2e}",
            f"{worst.relative_error:.2e}",
            f"{record.build_seconds:.1f}",
        )
    return table


def cleanup_table(manifest: Manifest) -> Table | None:
    """What constant folding removed from each exported graph; None for older manifests."""
    records = [r for r in manifest.components.values() if r.cleanup is not None]
    if not records:
        return None
    table = Table(title="exported graphs after constant folding")
    for column in ("component", "nodes exported", "kept", "most removed"):
        numeric = column in ("nodes exported", "kept")
        table.add_column(column, justify="right" if numeric else "left")
    for record in records:
        cleanup = record.cleanup
        assert cleanup is not None
        top = ", ".join(f"{op} {count}" for op, count in list(cleanup.removed.items())[:4])
        table.add_row(record.name, str(cleanup.exported_nodes), str(cleanup.kept_nodes), top)
    return table


def profiles_table(manifest: Manifest) -> Table:
    """The shapes each network was built for."""
    table = Table(title="shape ranges (min / opt / max)")
    for column in ("component", "input", "min", "opt", "max"):
        table.add_column(column)
    for record in manifest.components.values():
        for name, shape in record.io.profile.items():
            table.add_row(
                record.name, name, *(str(list(s)) for s in (shape.min, shape.opt, shape.max))
            )
    return table


def timing_table(result: GenerationOutput, title: str = "timings", denoiser: str = "unet") -> Table:
    """Per-stage time of one generation, per step where it repeats; `denoiser` names the
    network each step calls (SD 3's transformer)."""
    timings = result.timings
    steps = len(timings.unet)
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("total ms", justify="right")
    table.add_column("per step ms", justify="right")
    rows = [
        ("tokenizer", timings.tokenize, None),
        ("text encoder", timings.text_encoder, None),
        (f"{denoiser} x {steps}", sum(timings.unet), sum(timings.unet) / steps),
        (f"scheduler + guidance x {steps}", sum(timings.scheduler), sum(timings.scheduler) / steps),
        ("vae decoder", timings.vae_decoder, None),
        ("total", timings.total, None),
    ]
    if result.strength is not None:  # an input image was prepared and VAE-encoded
        rows.insert(2, ("image + vae encoder", timings.image_encode, None))
    if any(timings.controlnet):  # the ControlNets (per step: over every step, acting or not)
        spent = sum(timings.controlnet)
        rows.insert(-3, (f"controlnets x {steps}", spent, spent / steps))
    for stage, seconds, per_step in rows:
        table.add_row(
            stage, f"{seconds * 1e3:.1f}", "" if per_step is None else f"{per_step * 1e3:.2f}"
        )
    return table
