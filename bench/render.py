"""Benchmark reports as tables on screen."""

from __future__ import annotations

from rich.table import Table

from sdtrt.bench.compare import CompareReport
from sdtrt.bench.runner import BenchReport
from sdtrt.bench.stats import Latency


def _latency_table(title: str, rows: list[tuple[str, Latency]]) -> Table:
    table = Table(title=title)
    for column in ("stage", "p50 ms", "p90 ms", "p99 ms", "samples"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, latency in rows:
        table.add_row(
            name,
            f"{latency.p50_ms:.2f}",
            f"{latency.p90_ms:.2f}",
            f"{latency.p99_ms:.2f}",
            str(latency.samples),
        )
    return table


def bench_tables(report: BenchReport) -> list[Table]:
    stages = report.stages
    title = (
        f"{report.model['name']}: {report.height}x{report.width}, {report.options.steps} steps "
        f"({report.unet_calls} UNet calls), {report.scheduler}, batch {report.options.batch}"
    )
    rows = [
        ("tokenize", stages["tokenize"]),
        ("text encoder", stages["text_encoder"]),
        ("unet, per call", stages["unet_step"]),
        ("host work, per call", stages["host_step"]),
        ("vae decoder", stages["vae_decoder"]),
        ("end to end", stages["end_to_end"]),
    ]
    if "controlnet_step" in stages:
        rows.insert(
            3, (f"controlnet {report.options.controlnet}, per call", stages["controlnet_step"])
        )
    latency = _latency_table(title, rows)
    summary = Table(title="run", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    machine = report.machine
    summary.add_row("images / s", f"{report.images_per_second:.3f}")
    summary.add_row("load engines", f"{report.load_seconds:.2f} s")
    if report.import_seconds is not None:
        summary.add_row("imports of `sdtrt run`", f"{report.import_seconds:.2f} s")
    summary.add_row("peak memory (RSS)", f"{report.peak_rss_mib:.0f} MiB")
    for gpu in report.gpus_loaded:
        label = f"GPU memory in use, engines loaded ({gpu['name']})"
        summary.add_row(label, f"{gpu['memory_used_mib']:.0f} MiB")
    summary.add_row(
        "machine", f"{machine['cpu']}, {machine['logical_cpus']} CPUs, {machine['memory_gib']} GiB"
    )
    summary.add_row(
        "versions",
        f"sdtrt {machine['sdtrt']}, onnxruntime {machine['onnxruntime']}, numpy {machine['numpy']}",
    )
    return [latency, summary]


def compare_tables(report: CompareReport) -> list[Table]:
    title = f"{report.height}x{report.width}, {report.options.steps} steps, {report.scheduler}"
    unet = _latency_table(f"UNet call, guided batch ({title})", list(report.unet_step.items()))
    image = _latency_table(f"whole image ({title})", list(report.end_to_end.items()))
    turns = "" if report.interleaved else ", from separate turns"
    ratios = Table(title=f"sdtrt speed-up (reference p50 / sdtrt p50{turns})", show_header=False)
    ratios.add_column("against")
    ratios.add_column("x", justify="right")
    for name, value in report.speedups.items():
        ratios.add_row(name, f"{value:.2f}x")
    ratios.add_row("sdtrt host work per step", f"{report.host_step_us:.0f} us")
    return [unet, image, ratios]
