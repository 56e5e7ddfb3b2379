"""The `sdtrt` command: turns arguments into options and errors into one line and an exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from sdtrt import __version__
from sdtrt.engine.options import Precision
from sdtrt.errors import InputError, SdtrtError

app = typer.Typer(
    help="Stable Diffusion as an optimized inference engine: build engines, then run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


class _LevelPrefix(logging.Formatter):
    """'warning: message', one line, the way the error lines read."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _version(value: bool) -> None:
    if value:
        out.print(f"sdtrt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what each stage does.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefix())
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True
    )


@contextmanager
def _errors() -> Iterator[None]:
    """Every failure the user can fix becomes one line on stderr and exit status 1."""
    try:
        yield
    except SdtrtError as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None


def parse_size(text: str | None, option: str) -> tuple[int, int] | None:
    """'512' or '512x768' (height x width) to a (height, width) pair."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise InputError(f"{option} must look like 512 or 512x768 (height x width), got '{text}'")
    return (values[0], values[-1])


def _quiet_torch_libraries() -> None:
    """diffusers and transformers print progress bars and hints that say nothing to our users."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


@app.command()
def preset(
    name: Annotated[str, typer.Argument(help="Preset name: tiny or sd15.")],
    directory: Annotated[Path, typer.Argument(help="Where to write the diffusers folder.")],
) -> None:
    """Write a built-in model (random weights, real architecture) as a diffusers folder."""
    with _errors():
        from sdtrt.export.presets import get_preset, write_preset

        get_preset(name)
        _quiet_torch_libraries()
        with console.status(f"writing preset {name}"):
            write_preset(name, directory)
        out.print(f"wrote preset [bold]{name}[/] to {directory}")


def _build_progress(progress: Progress) -> Callable[[str, str], None]:
    stages = ("export", "optimize", "validate")
    tasks: dict[str, TaskID] = {}

    def report(component: str, stage: str) -> None:
        if not tasks:
            progress.start()  # shown from the first component on: errors before it stay one line
        if component not in tasks:
            tasks[component] = progress.add_task(component, total=len(stages))
        task = tasks[component]
        if stage in stages:
            progress.update(
                task, completed=stages.index(stage), description=f"{component}: {stage}"
            )
        else:
            progress.update(task, completed=len(stages), description=f"{component}: {stage}")

    return report


@app.command()
def build(
    model: Annotated[
        str, typer.Argument(help="A diffusers folder, a preset (tiny, sd15) or a hub id.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Engine directory to write.")],
    backend: Annotated[
        str, typer.Option(help="onnxruntime (CPU), onnxruntime-cuda or tensorrt.")
    ] = "onnxruntime",
    precision: Annotated[
        Precision, typer.Option(help="fp16 converts the graphs (the VAE decoder stays fp32).")
    ] = Precision.FP32,
    fp16_vae: Annotated[
        bool, typer.Option(help="With fp16: the VAE decoder too (for fp16-safe VAEs only).")
    ] = False,
    min_size: Annotated[str | None, typer.Option(help="Smallest image, HxW or N.")] = None,
    opt_size: Annotated[str | None, typer.Option(help="Image size to optimise for.")] = None,
    max_size: Annotated[str | None, typer.Option(help="Largest image, HxW or N.")] = None,
    max_batch: Annotated[int, typer.Option(help="Most images per call.")] = 4,
    static: Annotated[
        bool,
        typer.Option(help="One shape only (--opt-size, --max-batch images): TensorRT CUDA graphs."),
    ] = False,
    workspace: Annotated[
        float | None, typer.Option(help="TensorRT workspace limit in GiB; TensorRT's own if unset.")
    ] = None,
    optimization_level: Annotated[
        int, typer.Option(help="TensorRT builder optimisation level, 0 (fast build) to 5.")
    ] = 3,
    components: Annotated[
        str | None, typer.Option(help="Comma-separated networks to build (add vae_encoder).")
    ] = None,
) -> None:
    """Export a model to ONNX, build engines and check them against PyTorch."""
    with _errors():
        from sdtrt.engine.options import BuildOptions
        from sdtrt.export.build import ExportOptions
        from sdtrt.export.build import build as run_build
        from sdtrt.ui.tables import components_table

        if not 0 <= optimization_level <= 5:
            raise InputError(f"--optimization-level must be 0 to 5, got {optimization_level}")
        if workspace is not None and workspace <= 0:
            raise InputError(f"--workspace must be a positive number of GiB, got {workspace}")
        build_options = BuildOptions(
            backend=backend,
            precision=precision,
            fp16_vae=fp16_vae,
            min_size=parse_size(min_size, "--min-size"),
            opt_size=parse_size(opt_size, "--opt-size"),
            max_size=parse_size(max_size, "--max-size"),
            max_batch=max_batch,
            static=static,
            workspace_gib=workspace,
            optimization_level=optimization_level,
        )
        export_options = ExportOptions()
        if components:
            export_options = ExportOptions(
                components=tuple(c.strip() for c in components.split(","))
            )
        _quiet_torch_libraries()
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        progress = Progress(*columns, console=console, transient=False, auto_refresh=True)
        try:
            manifest = run_build(
                model, output, export_options, build_options, _build_progress(progress)
            )
        finally:
            if progress.live.is_started:
                progress.stop()
        out.print(components_table(manifest))
        out.print(f"engines written to [bold]{output}[/]")


@app.command()
def info(directory: Annotated[Path, typer.Argument(help="Engine directory.")]) -> None:
    """Show what an engine directory holds: components, backend, ranges, validation errors."""
    with _errors():
        from sdtrt.engine.manifest import read_manifest
        from sdtrt.ui.tables import components_table, profiles_table

        manifest = read_manifest(directory)
        ranges = manifest.ranges
        out.print(
            f"model      {manifest.model.name} ({manifest.source.kind}: {manifest.source.ref})"
        )
        out.print(f"built      {manifest.created} by sdtrt {manifest.sdtrt_version}")
        out.print(
            f"sizes      {ranges.size.describe()} px in steps of {ranges.size_step}, "
            f"optimised for {ranges.size.opt[0]}x{ranges.size.opt[1]}; "
            f"up to {ranges.max_batch} images per call"
        )
        out.print(components_table(manifest))
        out.print(profiles_table(manifest))


def _output_paths(output: Path, count: int) -> list[Path]:
    if output.suffix.lower() != ".png":
        raise InputError(f"the output must be a .png file, got {output}")
    if output.is_dir():
        raise InputError(
            f"{output} is a directory; give a file name such as {output / 'image.png'}"
        )
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


@app.command()
def run(
    directory: Annotated[Path, typer.Argument(help="Engine directory written by `sdtrt build`.")],
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path(
        "out.png"
    ),
    negative: Annotated[str, typer.Option(help="What to steer away from.")] = "",
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 50,
    guidance: Annotated[
        float, typer.Option(help="Classifier-free guidance scale; 1 turns it off.")
    ] = 7.5,
    seed: Annotated[
        int | None, typer.Option(help="Seed for the initial noise; random if unset.")
    ] = None,
    height: Annotated[
        int | None,
        typer.Option(help="Image height in pixels; the model's native size if unset."),
    ] = None,
    width: Annotated[int | None, typer.Option(help="Image width in pixels.")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Sampler: euler_a, dpmpp_2m_karras, unipc, ... (see the README) or a diffusers "
            "class name; the model's own if unset."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(help="Images to make from the prompt.")] = 1,
    noise: Annotated[
        str, typer.Option(help="Noise generator: torch (seeds match diffusers) or numpy.")
    ] = "torch",
) -> None:
    """Generate images from a prompt with the engines in DIRECTORY."""
    with _errors():
        from sdtrt.runtime.images import parameters_text, save_png
        from sdtrt.runtime.pipeline import Pipeline
        from sdtrt.ui.tables import timing_table

        paths = _output_paths(output, batch)
        with Pipeline.load(directory) as pipe:
            columns = (
                TextColumn("sampling"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task("sampling", total=None)

                def advance(i: int, total: int) -> None:
                    progress.update(task, completed=i + 1, total=total)

                result = pipe(
                    prompt,
                    negative_prompt=negative,
                    height=height,
                    width=width,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    seed=seed,
                    scheduler=scheduler,
                    num_images_per_prompt=batch,
                    noise=noise,
                    step_callback=advance,
                )
            request = result.request
            for index, (image, path) in enumerate(zip(result.images, paths, strict=True)):
                settings = {
                    "Steps": request.steps,
                    "Sampler": request.scheduler,
                    "CFG scale": request.guidance_scale,
                    "Seed": request.seed,
                    "Size": f"{request.width}x{request.height}",
                    "Model": pipe.manifest.model.name,
                }
                if request.noise != "torch":
                    settings["Noise"] = request.noise
                if batch > 1:
                    settings["Batch pos"] = index
                try:
                    save_png(image, path, parameters_text(prompt, negative, settings))  # type: ignore[arg-type]
                except OSError as error:
                    raise InputError(f"cannot write {path}: {error.strerror}") from None
                out.print(f"wrote {path}")
        out.print(timing_table(result))


@app.command()
def bench(
    directory: Annotated[Path, typer.Argument(help="Engine directory written by `sdtrt build`.")],
    steps: Annotated[int, typer.Option(help="Denoising steps per image.")] = 30,
    height: Annotated[
        int | None, typer.Option(help="Image height; the model's native size if unset.")
    ] = None,
    width: Annotated[int | None, typer.Option(help="Image width.")] = None,
    batch: Annotated[int, typer.Option(help="Images per call.")] = 1,
    scheduler: Annotated[
        str | None, typer.Option(help="Sampler; the model's own if unset.")
    ] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 1,
    runs: Annotated[int, typer.Option(help="Timed runs.")] = 5,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON.")
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(help="Also run diffusers (torch eager) and OpenVINO, and report speed-ups."),
    ] = False,
    model: Annotated[
        Path | None,
        typer.Option(help="With --compare: the diffusers folder the engines came from."),
    ] = None,
) -> None:
    """Measure latency per stage, end to end, images/s and memory; --compare adds references."""
    with _errors():
        from sdtrt.bench.render import bench_tables, compare_tables
        from sdtrt.bench.runner import BenchOptions, run_bench

        options = BenchOptions(
            steps=steps, height=height, width=width, batch=batch, scheduler=scheduler,
            warmup=warmup, runs=runs,
        )  # fmt: skip
        with console.status("benchmarking") as status:
            if compare:
                from sdtrt.bench.compare import compare as run_compare

                _quiet_torch_libraries()
                report: Any = run_compare(directory, options, model, progress=status.update)
                tables = compare_tables(report)
            else:
                report = run_bench(directory, options, progress=status.update)
                tables = bench_tables(report)
        for table in tables:
            out.print(table)
        if json_file is not None:
            try:
                json_file.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
            except OSError as error:
                raise InputError(f"cannot write {json_file}: {error.strerror}") from None
            out.print(f"wrote {json_file}")


@app.command()
def doctor() -> None:
    """Report Python, numpy, ONNX Runtime, CUDA, GPUs and TensorRT, and which backends work here."""
    with _errors():
        from sdtrt.engine.doctor import diagnose

        table = Table(title="sdtrt doctor", show_header=False)
        table.add_column("what")
        table.add_column("found")
        for finding in diagnose():
            colour = "green" if finding.ok else "yellow"
            table.add_row(finding.topic, f"[{colour}]{escape(finding.value)}[/]")
        out.print(table)


def main() -> None:
    app(prog_name="sdtrt")


if __name__ == "__main__":
    main()
