"""`sdtrt run`: images from an engine directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from sdtrt.cli.common import (
    app,
    console,
    out,
    user_errors,
)
from sdtrt.errors import InputError


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
    with user_errors():
        from sdtrt.engine.lora import parse_lora_arg
        from sdtrt.runtime.images import generation_settings, parameters_text, save_png
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
                settings = generation_settings(
                    request,
                    pipe.manifest.model.name,
                    index,
                    loras=", ".join(source.describe() for source in loras),
                    strength=result.strength,  # set for a call made from an input image
                )
                try:
                    save_png(image, path, parameters_text(prompt, negative, settings))  # type: ignore[arg-type]
                except OSError as error:
                    raise InputError(f"cannot write {path}: {error.strerror}") from None
                out.print(f"wrote {path}")
        out.print(timing_table(result))
