"""`sdtrt preset`, `build` and `info`: models in, engine directories out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from sdtrt.cli.common import (
    app,
    console,
    out,
    parse_size,
    user_errors,
)
from sdtrt.engine.options import Precision
from sdtrt.export.quiet_libraries import quiet_torch_libraries


@app.command()
def preset(
    name: Annotated[
        str,
        typer.Argument(
            help="Preset name: tiny, tiny-inpaint, tiny-v, tiny-turbo, tiny-lcm, tiny-sdxl, "
            "tiny-sdxl-refiner, tiny-sdxl-inpaint, tiny-sdxl-turbo, tiny-sd3, tiny-sd3-turbo, "
            "sd15, sdxl or sd35-medium; tiny VAEs (for --tiny-vae): taesd, tiny-taesd; "
            "ControlNets (for --controlnet): tiny-controlnet, tiny-controlnet-2, "
            "tiny-sdxl-controlnet, sd15-controlnet, sdxl-controlnet."
        ),
    ],
    directory: Annotated[Path, typer.Argument(help="Where to write the diffusers folder.")],
) -> None:
    """Write a built-in model (random weights, real architecture) as a diffusers folder."""
    with user_errors():
        from sdtrt.export.presets import check_preset, write_preset

        check_preset(name)
        quiet_torch_libraries()
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
        typer.Argument(
            help="A diffusers folder; a single-file checkpoint (.safetensors, or .ckpt with "
            "--allow-pickle); a preset (tiny, tiny-inpaint, tiny-v, tiny-turbo, tiny-lcm, "
            "tiny-sdxl, tiny-sdxl-refiner, tiny-sdxl-inpaint, tiny-sdxl-turbo, tiny-sd3, "
            "tiny-sd3-turbo, sd15, sdxl, sd35-medium); or a hub id."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Engine directory to write.")],
    backend: Annotated[
        str,
        typer.Option(
            help="auto (what `sdtrt doctor` says it picks here), onnxruntime (CPU), openvino "
            "(CPU), openvino-gpu (Intel GPU), openvino-npu (Intel NPU, --static), "
            "onnxruntime-cuda or tensorrt."
        ),
    ] = "auto",
    precision: Annotated[
        Precision,
        typer.Option(
            help="auto: the backend's fastest here (fp16 on GPUs, bf16 on CPUs with AVX-512 "
            "bf16 or AMX, else fp32; `sdtrt doctor` says which). fp16 converts the graphs; "
            "bf16, int8 (weights) and w8a8 (the denoiser's weights and activations, calibrated "
            "on real runs) are OpenVINO's."
        ),
    ] = Precision.AUTO,
    fp16_vae: Annotated[
        bool | None,
        typer.Option(
            "--fp16-vae/--fp32-vae",
            help="The VAE in the build's reduced float precision too, or in fp32. Default: "
            "with bf16 and w8a8 (no overflow in bf16), not with fp16 or int8.",
        ),
    ] = None,
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
        typer.Option(
            help="One size only (--opt-size), tuned for --max-batch images: TensorRT CUDA "
            "graphs, an OpenVINO model compiled for that shape."
        ),
    ] = False,
    workspace: Annotated[
        float | None, typer.Option(help="TensorRT workspace limit in GiB; TensorRT's own if unset.")
    ] = None,
    optimization_level: Annotated[
        int, typer.Option(help="TensorRT builder optimisation level, 0 (fast build) to 5.")
    ] = 3,
    components: Annotated[
        str | None,
        typer.Option(help="Comma-separated networks to build; the model's own by default."),
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
        typer.Option(
            help="Accept pickle weights (a .ckpt checkpoint, a folder's .bin files); loading "
            "them can run code they hold."
        ),
    ] = False,
    tiny_vae: Annotated[
        str | None,
        typer.Option(
            help="A tiny VAE to build beside the model's (`sdtrt run --vae tiny`): an "
            "AutoencoderTiny folder or hub id (TAESD, TAESDXL, TAESD3), or a preset (taesd, "
            "tiny-taesd)."
        ),
    ] = None,
    controlnet: Annotated[
        list[str] | None,
        typer.Option(
            help="A ControlNet to build beside the model (`sdtrt run --control NAME=HINT.png`), "
            "named after its folder or file: a ControlNetModel folder, a single .safetensors "
            "file (diffusers' or the original layout) or hub id, or a preset "
            "(tiny-controlnet, tiny-controlnet-2, tiny-sdxl-controlnet, sd15-controlnet, "
            "sdxl-controlnet); repeatable."
        ),
    ] = None,
) -> None:
    """Export a model to ONNX, build engines and check them against PyTorch."""
    with user_errors():
        from sdtrt.cli.tables import components_table
        from sdtrt.engine.options import BuildOptions, ExportOptions
        from sdtrt.export.build import build as run_build

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
        from sdtrt.engine.weights.lora import parse_lora_arg

        export_options = ExportOptions(
            loras=tuple(parse_lora_arg(text) for text in lora or []),
            allow_pickle=allow_pickle,
            tiny_vae=tiny_vae,
            controlnets=tuple(controlnet or ()),
        )
        if components:
            export_options = export_options.model_copy(
                update={"components": tuple(c.strip() for c in components.split(","))}
            )
        quiet_torch_libraries()
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
        for setting, why in manifest.picked.items():
            out.print(f"{setting} auto: {escape(why)}")
        out.print(f"engines written to [bold]{output}[/]")


@app.command()
def info(directory: Annotated[Path, typer.Argument(help="Engine directory.")]) -> None:
    """Show what an engine directory holds: components, backend, ranges, validation errors."""
    with user_errors():
        from sdtrt.cli.tables import cleanup_table, components_table, profiles_table
        from sdtrt.engine.manifest import read_manifest

        manifest = read_manifest(directory)
        ranges = manifest.ranges
        out.print(
            f"model      {manifest.model.name} ({manifest.source.kind}: {manifest.source.ref})"
        )
        out.print(f"built      {manifest.created} by sdtrt {manifest.sdtrt_version}")
        for setting, why in manifest.picked.items():
            out.print(f"{setting:<10} {escape(why)} (picked by auto)")
        merged = manifest.export_options.loras
        if merged:
            names = ", ".join(lora.describe() for lora in merged)
            out.print(f"LoRAs      {escape(names)} (merged at build)")
        out.print(
            f"sizes      {ranges.size.describe()} px in steps of {ranges.size_step}, "
            f"optimised for {ranges.size.opt[0]}x{ranges.size.opt[1]}; "
            f"up to {ranges.max_batch} images per call, prompts of up to "
            f"{ranges.max_prompt_chunks} chunks (--prompt-syntax a1111)"
        )
        out.print(components_table(manifest))
        cleanup = cleanup_table(manifest)
        if cleanup is not None:
            out.print(cleanup)
        out.print(profiles_table(manifest))
        from sdtrt.cli.islands import island_lines

        for line in island_lines(manifest):
            out.print(line, soft_wrap=True, markup=False, highlight=False)
