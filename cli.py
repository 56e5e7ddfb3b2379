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
    name: Annotated[str, typer.Argument(help="Preset name: tiny, tiny-inpaint or sd15.")],
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
        str,
        typer.Argument(help="A diffusers folder, a preset (tiny, tiny-inpaint, sd15) or a hub id."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Engine directory to write.")],
    backend: Annotated[
        str,
        typer.Option(
            help="auto (what `sdtrt doctor` says it picks here), onnxruntime (CPU), openvino "
            "(CPU), onnxruntime-cuda or tensorrt."
        ),
    ] = "auto",
    precision: Annotated[
        Precision,
        typer.Option(
            help="fp16 converts the graphs; bf16 and int8 (weights) are OpenVINO's. The VAE "
            "decoder stays fp32."
        ),
    ] = Precision.FP32,
    fp16_vae: Annotated[
        bool,
        typer.Option(help="With fp16/bf16/int8: the VAE decoder too (for VAEs known to be safe)."),
    ] = False,
    fp16_guard: Annotated[
        bool,
        typer.Option(
            help="With fp16: compare with fp32 on calibration inputs and keep the nodes that "
            "overflow or drift in fp32 (the VAE decoder too, instead of all of it)."
        ),
    ] = False,
    min_size: Annotated[str | None, typer.Option(help="Smallest image, HxW or N.")] = None,
    opt_size: Annotated[str | None, typer.Option(help="Image size to optimise for.")] = None,
    max_size: Annotated[str | None, typer.Option(help="Largest image, HxW or N.")] = None,
    max_batch: Annotated[int, typer.Option(help="Most images per call.")] = 4,
    max_prompt_chunks: Annotated[
        int,
        typer.Option(help="Longest prompt in 75-token chunks, for --prompt-syntax a1111."),
    ] = 3,
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
    lora: Annotated[
        list[str] | None,
        typer.Option(help="FILE.safetensors[:SCALE], merged before export; repeatable."),
    ] = None,
    refittable: Annotated[
        bool, typer.Option(help="TensorRT: engines whose LoRAs can be switched without a rebuild.")
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(help="Accept a .ckpt (pickle) checkpoint; loading one can run code in it."),
    ] = False,
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
        if fp16_guard and precision is not Precision.FP16:
            raise InputError(
                f"--fp16-guard checks fp16 graphs; add --precision fp16 (got {precision.value})"
            )
        build_options = BuildOptions(
            backend=backend,
            precision=precision,
            fp16_vae=fp16_vae,
            fp16_guard=fp16_guard,
            min_size=parse_size(min_size, "--min-size"),
            opt_size=parse_size(opt_size, "--opt-size"),
            max_size=parse_size(max_size, "--max-size"),
            max_batch=max_batch,
            max_prompt_chunks=max_prompt_chunks,
            static=static,
            workspace_gib=workspace,
            optimization_level=optimization_level,
            refittable=refittable,
        )
        from sdtrt.engine.lora import parse_lora_arg

        export_options = ExportOptions(
            loras=tuple(parse_lora_arg(text) for text in lora or []), allow_pickle=allow_pickle
        )
        if components:
            export_options = export_options.model_copy(
                update={"components": tuple(c.strip() for c in components.split(","))}
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
        merged = manifest.export_options.get("loras") or []
        if merged:
            names = ", ".join(f"{Path(lora['path']).name}:{lora['scale']:g}" for lora in merged)
            out.print(f"LoRAs      {escape(names)} (merged at build)")
        out.print(
            f"sizes      {ranges.size.describe()} px in steps of {ranges.size_step}, "
            f"optimised for {ranges.size.opt[0]}x{ranges.size.opt[1]}; "
            f"up to {ranges.max_batch} images per call, prompts of up to "
            f"{ranges.max_prompt_chunks} chunks (--prompt-syntax a1111)"
        )
        out.print(components_table(manifest))
        out.print(profiles_table(manifest))
        from sdtrt.ui.precision import island_lines

        for line in island_lines(manifest):
            out.print(line, soft_wrap=True, markup=False, highlight=False)


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
    lora: Annotated[
        list[str] | None,
        typer.Option(help="FILE.safetensors[:SCALE] applied to the engines; repeatable."),
    ] = None,
    prompt_syntax: Annotated[
        str,
        typer.Option(
            help="diffusers (plain text, cut at 77 tokens) or a1111: (word:1.3), [word], BREAK, "
            "longer prompts."
        ),
    ] = "diffusers",
    clip_skip: Annotated[
        int | None,
        typer.Option(help="Text encoder layers to skip from the end (diffusers' clip_skip)."),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(help="Start from this image (image to image, or inpainting with --mask)."),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(help="Inpainting mask for --image: white is repainted, black kept."),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            help="How much of --image to repaint, in (0, 1]; 0.8 for image to image and 1 for "
            "inpainting if unset."
        ),
    ] = None,
) -> None:
    """Generate images from a prompt with the engines in DIRECTORY (from --image too)."""
    with _errors():
        from sdtrt.engine.lora import parse_lora_arg
        from sdtrt.runtime.images import parameters_text, save_png
        from sdtrt.runtime.pipeline import Pipeline
        from sdtrt.ui.tables import timing_table

        paths = _output_paths(output, batch)
        loras = [parse_lora_arg(text) for text in lora or []]
        if mask is not None and image is None:
            raise InputError("--mask needs --image: the image to inpaint")
        with Pipeline.load(directory) as pipe:
            if loras:
                with console.status("applying LoRAs"):
                    pipe.set_loras(loras)
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
                    prompt_syntax=prompt_syntax,
                    clip_skip=clip_skip,
                    image=image,
                    mask_image=mask,
                    strength=strength,
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
                if loras:
                    settings["LoRA"] = ", ".join(source.describe() for source in loras)
                if request.noise != "torch":
                    settings["Noise"] = request.noise
                if request.clip_skip:
                    # The web UI counts the last layer as 1: its "Clip skip: 2" skips one.
                    settings["Clip skip"] = request.clip_skip + 1
                if result.strength is not None:  # made from an input image
                    settings["Denoising strength"] = result.strength
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
        typer.Option(
            help="Also run diffusers (torch eager, torch.compile), OpenVINO and ONNX Runtime, "
            "and report speed-ups."
        ),
    ] = False,
    model: Annotated[
        Path | None,
        typer.Option(help="With --compare: the diffusers folder the engines came from."),
    ] = None,
    torch_compile: Annotated[
        bool,
        typer.Option(help="With --compare: include torch.compile (compiling takes minutes)."),
    ] = True,
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
                report: Any = run_compare(
                    directory, options, model, progress=status.update, torch_compile=torch_compile
                )
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


@app.command()
def serve(
    directory: Annotated[Path, typer.Argument(help="Engine directory written by `sdtrt build`.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on; any but loopback should have --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    workers: Annotated[
        int | None,
        typer.Option(help="Generations run side by side; by default 1 on the CPU, 2 on a GPU."),
    ] = None,
    queue: Annotated[int, typer.Option(help="Jobs that may wait; more get 429.")] = 16,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer KEY' on every route but /healthz."),
    ] = None,
    max_steps: Annotated[int, typer.Option(help="Most denoising steps a request may ask.")] = 150,
) -> None:
    """Serve the engines over HTTP: a web page at /, the /v1 API and the A1111 API."""
    with _errors():
        try:
            from sdtrt.serve.server import prepare
        except ImportError as error:
            raise InputError(
                f"serving needs the serve extra ({error.name} is missing): "
                "pip install 'sdtrt[serve]'"
            ) from None
        server = prepare(directory, host, port, workers, queue, api_key, max_steps)
        shown = f"[{host}]" if ":" in host else host
        out.print(f"serving {directory} on http://{shown}:{port} (ready once /readyz says so)")
        server.run()


@app.command("export-triton")
def export_triton(
    directory: Annotated[Path, typer.Argument(help="Engine directory written by `sdtrt build`.")],
    output: Annotated[Path, typer.Argument(help="Triton model repository to write into.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "sdtrt_txt2img",
    instances: Annotated[int, typer.Option(help="Model instances (processes) Triton runs.")] = 1,
    max_steps: Annotated[int, typer.Option(help="Most denoising steps a request may ask.")] = 150,
) -> None:
    """Write a Triton Inference Server model (Python backend) around the engines."""
    with _errors():
        from sdtrt.serve.triton import export_triton as run_export

        target = run_export(directory, output, name, instances, max_steps)
        out.print(f"wrote Triton model {name} to {target}")


debug_app = typer.Typer(help="Tools for when an image looks wrong.", no_args_is_help=True)
app.add_typer(debug_app, name="debug")


@debug_app.command("compare")
def debug_compare(
    directory: Annotated[Path, typer.Argument(help="Engine directory written by `sdtrt build`.")],
    prompt: Annotated[str, typer.Option(help="Prompt the text encoder is compared on.")] = (
        "a photo of an astronaut riding a horse"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the random latents fed to each network.")] = 0,
) -> None:
    """Run each network next to its fp32 ONNX reference; print the first tensors that diverge."""
    with _errors():
        from sdtrt.runtime.debug_compare import compare

        diverged = False
        for item in compare(directory, prompt, seed):
            if item.skipped is not None:
                out.print(f"{item.component}: skipped, {item.skipped}", soft_wrap=True)
                continue
            diverged = diverged or item.diverges
            verdict = "DIVERGES" if item.diverges else "matches"
            out.print(
                f"{item.component} ({item.precision}) {verdict} its fp32 reference "
                f"{item.reference} (tolerance {item.tolerance:g} of scale)",
                soft_wrap=True, markup=False, highlight=False,
            )  # fmt: skip
            for output in item.outputs:
                out.print(f"  output {output.tensor}: relative error {output.relative_error:.3g}",
                          markup=False, highlight=False)  # fmt: skip
            for first in item.first_diverging:
                out.print(
                    f"  first diverging tensor {first.tensor}: relative error "
                    f"{first.relative_error:.3g}",
                    soft_wrap=True, markup=False, highlight=False,
                )  # fmt: skip
        if diverged:
            raise typer.Exit(2)


def main() -> None:
    app(prog_name="sdtrt")


if __name__ == "__main__":
    main()
