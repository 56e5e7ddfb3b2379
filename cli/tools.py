"""`sdtrt bench`, `doctor`, `serve`, `export-triton` and `debug`: measure, check, serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from sdtrt.cli.common import (
    app,
    console,
    out,
    user_errors,
)
from sdtrt.errors import InputError


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
    controlnet: Annotated[
        str | None,
        typer.Option(help="Run this ControlNet of the engines at every step, on a made-up hint."),
    ] = None,
) -> None:
    """Measure latency per stage, end to end, images/s and memory; --compare adds references."""
    with user_errors():
        from sdtrt.bench.render import bench_tables, compare_tables
        from sdtrt.bench.runner import BenchOptions, run_bench

        options = BenchOptions(
            steps=steps,
            height=height,
            width=width,
            batch=batch,
            scheduler=scheduler,
            warmup=warmup,
            runs=runs,
            controlnet=controlnet,
        )
        if compare and controlnet is not None:
            raise InputError("--compare measures the model alone; leave out --controlnet")
        with console.status("benchmarking") as status:
            if compare:
                from sdtrt.bench.compare import compare as run_compare

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
                raise InputError(f"cannot write {json_file}: {error.strerror}") from error
            out.print(f"wrote {json_file}")


@app.command()
def doctor() -> None:
    """Report Python, numpy, ONNX Runtime, CUDA, GPUs and TensorRT, and which backends work here."""
    with user_errors():
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
    directories: Annotated[
        list[Path],
        typer.Argument(
            help="Engine directories written by `sdtrt build`, a model each; the first is the "
            "default, the others load when a request names them."
        ),
    ],
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
        typer.Option(
            envvar="SDTRT_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every route but /healthz.",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="Read the API key from this file (out of sight of `ps`)."),
    ] = None,
    max_steps: Annotated[int, typer.Option(help="Most denoising steps a request may ask.")] = 150,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Also answer to this name (a proxy's public name, whose pages may then post "
            "here); repeatable; '*' answers any name."
        ),
    ] = None,
    lora_dir: Annotated[
        Path | None,
        typer.Option(
            help="LoRA .safetensors files, by file name: <lora:NAME:WEIGHT> in A1111 prompts, "
            "/v1's `loras`."
        ),
    ] = None,
    memory_budget: Annotated[
        float | None,
        typer.Option(
            help="GiB the models' engines may hold; the least recently used idle ones are "
            "unloaded to make room. Default: three quarters of this machine's memory."
        ),
    ] = None,
    embeddings_dir: Annotated[
        Path | None,
        typer.Option(
            help="Textual-inversion embeddings (.safetensors; .pt with --allow-pickle), each "
            "used by its word in any prompt, as the A1111 web UI's embeddings folder."
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            help="Read .pt and .bin embeddings of --embeddings-dir too: pickles, which can run "
            "code as they load (sdtrt's reader allows only tensors; trust their source all the "
            "same)."
        ),
    ] = False,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Proxies whose X-Forwarded-For and -Proto are believed (comma-separated "
            "addresses, or '*'); none by default."
        ),
    ] = None,
) -> None:
    """Serve the engines over HTTP: a web page at /, the /v1 API and the A1111 API."""
    with user_errors():
        try:
            from sdtrt.serve.server import prepare, read_api_key
        except ImportError as error:
            raise InputError(
                f"serving needs the serve extra ({error.name} is missing): "
                "pip install 'sdtrt[serve]'"
            ) from error
        server = prepare(
            directories,
            host,
            port,
            workers,
            queue,
            read_api_key(api_key, api_key_file),
            max_steps,
            tuple(allowed_host or ()),
            forwarded_allow_ips,
            lora_dir,
            memory_budget,
            embeddings_dir,
            allow_pickle,
        )
        shown = f"[{host}]" if ":" in host else host
        served = ", ".join(str(directory) for directory in directories)
        out.print(f"serving {served} on http://{shown}:{port} (ready once /readyz says so)")
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
    with user_errors():
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
    with user_errors():
        from sdtrt.debug.compare import compare

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
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
            for output in item.outputs:
                out.print(
                    f"  output {output.tensor}: relative error {output.relative_error:.3g}",
                    markup=False,
                    highlight=False,
                )
            for first in item.first_diverging:
                out.print(
                    f"  first diverging tensor {first.tensor}: relative error "
                    f"{first.relative_error:.3g}",
                    soft_wrap=True,
                    markup=False,
                    highlight=False,
                )
        if diverged:
            raise typer.Exit(2)
