"""`sdtrt run`: images from an engine directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

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

if TYPE_CHECKING:
    from PIL import Image


def _layers(text: str | None) -> list[int] | None:
    """`7,8,9` as layer numbers."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as error:
        raise InputError(
            "--skip-guidance-layers takes layer numbers separated by commas, like 7,8,9; "
            f"got {text!r}"
        ) from error


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
    steps: Annotated[
        int | None,
        typer.Option(help="Denoising steps; the model's default if unset (50, LCM 4)."),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            help="Classifier-free guidance scale; 1 turns it off. The model's default if unset "
            "(7.5, SDXL 5, LCM 8.5)."
        ),
    ] = None,
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
    lora_dir: Annotated[
        Path | None,
        typer.Option(
            help="LoRA .safetensors files by name, for <lora:NAME:WEIGHT> in an a1111-syntax "
            "prompt."
        ),
    ] = None,
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
            help="How much of --image to repaint, in (0, 1]; diffusers' default if unset (image "
            "to image 0.8, SDXL 0.3; inpainting 1, SDXL 0.9999)."
        ),
    ] = None,
    padding_mask_crop: Annotated[
        int | None,
        typer.Option(
            help="Inpaint only around the mask: this many pixels of margin, the crop made at "
            "the output size and pasted back into --image (diffusers' padding_mask_crop)."
        ),
    ] = None,
    prompt_2: Annotated[
        str | None,
        typer.Option(
            help="SDXL and SD 3: the prompt for the second text encoder; --prompt's if unset."
        ),
    ] = None,
    prompt_3: Annotated[
        str | None,
        typer.Option(help="SD 3: the prompt for T5, the third text encoder; --prompt's if unset."),
    ] = None,
    max_sequence_length: Annotated[
        int | None,
        typer.Option(help="SD 3: T5's tokens, up to 512; diffusers' 256 if unset."),
    ] = None,
    skip_guidance_layers: Annotated[
        str | None,
        typer.Option(
            help="SD 3: skip-layer guidance over these transformer layers, e.g. 7,8,9 (SD 3.5 "
            "Medium's recommendation), from 1% to 20% of the steps at scale 2.8."
        ),
    ] = None,
    refiner: Annotated[
        Path | None,
        typer.Option(
            help="SDXL: an SDXL refiner's engine directory, which finishes each image from "
            "--refiner-start on (the ensemble of experts)."
        ),
    ] = None,
    refiner_start: Annotated[
        float,
        typer.Option(help="The fraction of the denoising the base model does before --refiner."),
    ] = 0.8,
    vae: Annotated[
        str,
        typer.Option(
            help="full (the model's VAE) or tiny: the tiny VAE built with `sdtrt build "
            "--tiny-vae`, faster and less detailed (with --refiner: both have one)."
        ),
    ] = "full",
    control: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=HINT.png[:SCALE]: guide the image with ControlNet NAME (built with "
            "`sdtrt build --controlnet`) and a hint image, at SCALE (the task's default: 1 for "
            "text to image); canny:NAME=PHOTO.png makes the hint from a photo's edges; "
            "repeatable."
        ),
    ] = None,
    canny_thresholds: Annotated[
        tuple[float, float],
        typer.Option(help="LOW HIGH: the canny preprocessor's thresholds (the A1111 web UI's)."),
    ] = (100.0, 200.0),
    control_start: Annotated[
        float, typer.Option(help="The fraction of the steps after which the ControlNets act.")
    ] = 0.0,
    control_end: Annotated[
        float, typer.Option(help="The fraction of the steps after which they stop.")
    ] = 1.0,
    embedding: Annotated[
        list[Path] | None,
        typer.Option(
            help="A textual-inversion embedding (.safetensors: diffusers' or the A1111 web "
            "UI's; .pt with --allow-pickle), used in the prompt by its word (the A1111 files': "
            "their name); repeatable."
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            help="Read .pt and .bin embeddings too: pickles, which can run code as they load "
            "(sdtrt's reader allows only tensors; trust their source all the same)."
        ),
    ] = False,
    embeddings_dir: Annotated[
        Path | None,
        typer.Option(
            help="Every embedding in this folder, each by its word, as the A1111 web UI's "
            "embeddings folder (those this model cannot take are skipped, with a warning)."
        ),
    ] = None,
    guess_mode: Annotated[
        bool,
        typer.Option(
            help="ControlNets on the prompt's rows only, deep blocks weighted most: the hint "
            "guides even without a prompt."
        ),
    ] = False,
) -> None:
    """Generate images from a prompt with the engines in DIRECTORY (from --image too)."""
    with user_errors():
        from sdtrt.cli.tables import timing_table
        from sdtrt.engine.weights.lora import parse_lora_arg
        from sdtrt.runtime.lora_library import LoraLibrary, take_tags
        from sdtrt.runtime.pipeline import GenerationOutput, Pipeline
        from sdtrt.runtime.postprocess import generation_settings, parameters_text, save_png
        from sdtrt.runtime.textual_inversion import load_folder

        paths = _output_paths(output, batch)
        loras = [parse_lora_arg(text) for text in lora or []]
        if prompt_syntax == "a1111":  # the web UI's LoRA tags, by name from --lora-dir
            prompt, weights = take_tags(prompt)
            loras += LoraLibrary(lora_dir).sources(weights)
        elif lora_dir is not None:
            raise InputError(
                "--lora-dir names LoRAs for <lora:NAME:WEIGHT> tags: add --prompt-syntax a1111"
            )
        if mask is not None and image is None:
            raise InputError("--mask needs --image: the image to inpaint")
        if refiner is not None and not 0 < refiner_start < 1:
            raise InputError(f"--refiner-start must be between 0 and 1, got {refiner_start}")
        controls = [parse_control_arg(text) for text in control or []]
        if not controls and (control_start, control_end, guess_mode) != (0.0, 1.0, False):
            raise InputError("--control-start, --control-end and --guess-mode need --control")
        controlled: dict[str, Any] = {}
        if controls:
            controlled = {
                "controlnet": [c.name for c in controls],
                "control_image": [control_hint(c, canny_thresholds) for c in controls],
                "controlnet_conditioning_scale": [c.scale for c in controls],
                "control_guidance_start": control_start,
                "control_guidance_end": control_end,
                "guess_mode": guess_mode,
            }

        def generate(pipe: Pipeline, what: str, seed: int | None, **task: Any) -> GenerationOutput:
            """One call with the command's prompt settings; `task` says what it starts from."""
            with _sampling_progress(what) as advance:
                return pipe(
                    prompt,
                    # None, not "": SDXL conditions on zeros without a negative prompt.
                    negative_prompt=negative or None,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    seed=seed,
                    scheduler=scheduler,
                    num_images_per_prompt=batch,
                    noise=noise,
                    step_callback=advance,
                    prompt_syntax=prompt_syntax,
                    clip_skip=clip_skip,
                    prompt_2=prompt_2,
                    prompt_3=prompt_3,
                    max_sequence_length=max_sequence_length,
                    skip_guidance_layers=_layers(skip_guidance_layers),
                    vae=vae,
                    **task,
                )

        refined = None
        with ExitStack() as stack:
            pipe = stack.enter_context(Pipeline.load(directory))
            second = None if refiner is None else stack.enter_context(Pipeline.load(refiner))
            if embeddings_dir is not None:
                load_folder(embeddings_dir, pipe.load_textual_inversion, allow_pickle)
            for path in embedding or []:
                pipe.load_textual_inversion(path, allow_pickle=allow_pickle)
            if loras:
                with console.status("applying LoRAs"):
                    pipe.set_loras(loras)
            handoff: dict[str, Any] = (
                {} if second is None else {"denoising_end": refiner_start, "output_type": "latent"}
            )
            result = generate(
                pipe,
                what="sampling",
                seed=seed,
                height=height,
                width=width,
                image=image,
                mask_image=mask,
                strength=strength,
                padding_mask_crop=padding_mask_crop,
                **handoff,
                **controlled,
            )
            if second is not None:  # the base model's latents, finished by the refiner
                refined = generate(
                    second,
                    what="refining",
                    seed=result.request.seed,
                    image=result.images,
                    denoising_start=refiner_start,
                )
            final = result if refined is None else refined
            request = result.request
            for index, (image, path) in enumerate(zip(final.images, paths, strict=True)):
                settings = generation_settings(
                    request,
                    pipe.manifest.model.name,
                    index,
                    loras=", ".join(source.describe() for source in loras),
                    strength=result.strength,  # set for a call made from an input image
                    controls=result.controls,
                )
                try:
                    save_png(image, path, parameters_text(prompt, negative, settings))  # type: ignore[arg-type]
                except OSError as error:
                    raise InputError(f"cannot write {path}: {error.strerror}") from error
                out.print(f"wrote {path}")
        if refined is None:
            out.print(timing_table(result, denoiser=pipe.family.denoiser))
        else:
            out.print(timing_table(result, "base model timings"))
            out.print(timing_table(refined, "refiner timings"))


class ControlArg(NamedTuple):
    """One --control: [MODULE:]NAME=HINT[:SCALE]."""

    name: str
    hint: Path
    scale: float | None  # None: the task's default, as diffusers'
    module: str = "none"  # a preprocessor that makes the hint from HINT (canny)


def parse_control_arg(text: str) -> ControlArg:
    """[MODULE:]NAME=HINT[:SCALE]; a ControlNet's name has no colon, a preprocessor's neither."""
    target, sign, rest = text.partition("=")
    module, colon, name = target.rpartition(":")
    if not sign or not name or not rest or (colon and not module):
        raise InputError(f"--control takes [canny:]NAME=HINT.png[:SCALE], got {text!r}")
    module = module or "none"
    hint, colon, scale = rest.rpartition(":")
    if colon and hint:
        try:
            return ControlArg(name, Path(hint), float(scale), module)
        except ValueError:
            pass  # a colon of the path (C:\...), not a scale
    return ControlArg(name, Path(rest), None, module)


def control_hint(control: ControlArg, thresholds: tuple[float, float]) -> Path | Image.Image:
    """The hint of a --control: its file, or what its preprocessor makes of that file."""
    if control.module == "none":
        return control.hint
    from sdtrt.runtime.hint_preprocessors import run_preprocessor
    from sdtrt.runtime.preprocess import open_image

    return run_preprocessor(control.module, open_image(control.hint, "hint"), thresholds)


@contextmanager
def _sampling_progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over a call's steps, and the step callback that moves it."""
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(what, total=None)

        def advance(i: int, total: int) -> None:
            progress.update(task, completed=i + 1, total=total)

        yield advance
