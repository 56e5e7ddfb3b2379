"""ControlNets at run time, as diffusers' ControlNet pipelines run them.

A call names the ControlNets it uses (every one built, in build order, by default), a hint image
for each, a conditioning scale and the fraction of the steps each acts on. At each step every
active ControlNet reads the latents the UNet reads and its hint; its residuals, scaled, are
summed over the ControlNets and handed to the UNet. Guess mode runs the ControlNets on the
guided rows only, their residuals ramped from 0.1 (shallow) to 1 (deep), zeros for the
unguided rows. A UNet built with ControlNets is fed zeros on calls without one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.layout import controlnet_component
from sdtrt.engine.manifest import ModelInfo
from sdtrt.engine.residuals import dim_level, downsampled, is_residual
from sdtrt.engine.tensors import TensorSpec
from sdtrt.errors import InputError
from sdtrt.runtime.families import family_of
from sdtrt.runtime.preprocess import ImageInput, load_input, preprocess_hint
from sdtrt.runtime.request import Controls, ControlUnit, Request
from sdtrt.runtime.task_setup import ImageInputs


def _per_unit(value: object, count: int, what: str, default: float) -> list[float]:
    """diffusers' convention: one value for every ControlNet, or a list of one per ControlNet
    (where None stands for the default)."""
    if value is None:
        return [default] * count
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise InputError(f"{what} has {len(values)} values for {count} ControlNets")
    try:  # a None in the list: that ControlNet's default
        numbers = [default if v is None else float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise InputError(f"{what} must be numbers, got {values!r}") from error
    if not all(np.isfinite(numbers)):
        raise InputError(f"{what} must be finite numbers, got {values!r}")
    return numbers


def make_controls(
    model: ModelInfo,
    control_image: ImageInput | Sequence[ImageInput] | None,
    controlnet: str | Sequence[str] | None = None,
    scale: float | Sequence[float] | None = None,
    start: float | Sequence[float] | None = None,
    end: float | Sequence[float] | None = None,
    guess_mode: bool = False,
    inputs: ImageInputs | None = None,
) -> Controls | None:
    """A call's ControlNets from diffusers' arguments (`control_image`,
    `controlnet_conditioning_scale`, `control_guidance_start`, `control_guidance_end`,
    `guess_mode`) and the names of the ControlNets (`controlnet`: every built one by
    default), checked against the call's `inputs` (None: text to image); None for a call
    without a control image. Scales default to those of diffusers' ControlNet pipeline for
    the family and task."""
    built = [c.name for c in model.controlnets]
    if control_image is None:
        given = [
            ("controlnet", controlnet),
            ("controlnet_conditioning_scale", scale),
            ("control_guidance_start", start),
            ("control_guidance_end", end),
        ]
        named = [name for name, value in given if value is not None]
        if named or guess_mode:
            what = named[0] if named else "guess_mode"
            raise InputError(f"{what} applies to ControlNets: give control_image= (--control)")
        return None
    if not built:
        raise InputError(
            "these engines have no ControlNet; rebuild with `sdtrt build --controlnet SOURCE`"
        )
    names = built if controlnet is None else _names(controlnet)
    for name in names:
        if name not in built:
            raise InputError(f"no ControlNet '{name}' was built here; built: {', '.join(built)}")
    images = cast(
        list[ImageInput],
        list(control_image) if isinstance(control_image, (list, tuple)) else [control_image],
    )
    if len(images) != len(names):
        raise InputError(
            f"{len(images)} control images for {len(names)} ControlNets ({', '.join(names)}); "
            "give one image per ControlNet"
        )
    if inputs is not None and inputs.padding_mask_crop is not None:
        raise InputError(
            "inpainting around the mask (padding_mask_crop; A1111's inpaint_full_res) does not "
            "take ControlNets yet; leave it off"
        )
    task = "txt2img" if inputs is None else inputs.kind
    default_scale = family_of(model).default_controlnet_scale(task)
    scales = _per_unit(scale, len(names), "controlnet_conditioning_scale", default_scale)
    starts = _per_unit(start, len(names), "control_guidance_start", 0.0)
    ends = _per_unit(end, len(names), "control_guidance_end", 1.0)
    for begins, ends_at in zip(starts, ends, strict=True):
        if not 0.0 <= begins < ends_at <= 1.0:
            raise InputError(
                f"control guidance runs from start to end, 0 <= start < end <= 1; got "
                f"{begins} to {ends_at}"
            )
    return Controls(
        tuple(
            ControlUnit(name, load_input(image, "control image"), s, b, e)
            for name, image, s, b, e in zip(names, images, scales, starts, ends, strict=True)
        ),
        guess_mode=bool(guess_mode),
    )


def _names(controlnet: str | Sequence[str]) -> list[str]:
    names = [controlnet] if isinstance(controlnet, str) else list(controlnet)
    if not names or not all(isinstance(name, str) for name in names):
        raise InputError(f"controlnet names ControlNets built here, got {controlnet!r}")
    return names


def control_run(
    controls: Controls | None,
    denoiser: Engine,
    request: Request,
    conditioning: Mapping[str, np.ndarray],
    model: ModelInfo,
    open_engine: Callable[[str], Engine],
) -> ControlRun | None:
    """A call's ControlNets, or zeros for a UNet built to take them; None for a UNet not
    (`open_engine` opens a network of the engine directory by name, once)."""
    residuals = tuple(t for t in denoiser.io.inputs if is_residual(t.name))
    if not residuals:
        if controls is not None:
            raise InputError(
                "these engines have no ControlNet; rebuild with `sdtrt build --controlnet SOURCE`"
            )
        return None
    units = controls.units if controls is not None else ()
    engines = {
        controlnet_component(u.name): open_engine(controlnet_component(u.name)) for u in units
    }
    return ControlRun(
        controls,
        engines,
        residuals,
        conditioning,
        model=model,
        batch=request.batch,
        guided=request.guided,
        height=request.height,
        width=request.width,
    )


def zero_residuals(
    residuals: Sequence[TensorSpec], model: ModelInfo, rows: int, height: int, width: int
) -> dict[str, np.ndarray]:
    """The UNet's residual inputs, all zeros, for `rows` rows of height x width px images:
    what it is fed where no ControlNet acts."""
    f = model.vae_scale_factor
    sizes = {"batch": rows, "latent_height": height // f, "latent_width": width // f}

    def size(dim: int | str) -> int:
        if isinstance(dim, int):
            return dim
        if dim in sizes:
            return sizes[dim]
        latent = sizes[f"latent_{'height' if 'height' in dim else 'width'}"]
        return downsampled(latent, dim_level(dim), model.downsample_padding)

    return {t.name: np.zeros(tuple(size(d) for d in t.shape), np.float32) for t in residuals}


class ControlRun:
    """A call's ControlNets over its steps: the UNet's residual inputs for each step."""

    def __init__(
        self,
        controls: Controls | None,
        engines: Mapping[str, Engine],
        residuals: tuple[TensorSpec, ...],
        conditioning: Mapping[str, np.ndarray],
        *,
        model: ModelInfo,
        batch: int,
        guided: bool,
        height: int,
        width: int,
    ) -> None:
        """`residuals`: the UNet's residual inputs; `conditioning`: its inputs besides the
        latents and the timestep, with the guided rows after the unguided ones."""
        # Guess mode ramps the residuals always, and runs the ControlNets on the guided rows
        # only where there are unguided ones.
        self.ramp = controls is not None and controls.guess_mode
        self.guess = self.ramp and guided
        rows = 2 * batch if guided else batch
        self.zeros = zero_residuals(residuals, model, rows, height, width)
        # Guess mode's residuals, rows of zeros then the guided rows', reused over the steps.
        self.guessed = {name: np.zeros_like(v) for name, v in self.zeros.items() if self.guess}
        self.order = [t.name for t in residuals]
        # Per ControlNet: itself, its engine, its feeds, and its residuals' factors (None: 1).
        self.units: list[tuple[ControlUnit, Engine, dict[str, np.ndarray], np.ndarray | None]] = []
        for unit in controls.units if controls is not None else ():
            engine = engines[controlnet_component(unit.name)]
            taken = {t.name for t in engine.io.inputs}
            hint = preprocess_hint(unit.hint, height, width)
            hint = np.repeat(hint, batch, axis=0)
            feeds = {k: v for k, v in conditioning.items() if k in taken}
            if self.guess:  # the guided rows only
                feeds = {k: np.split(v, 2)[1] for k, v in feeds.items()}
            elif guided:
                hint = np.concatenate([hint, hint])
            feeds["controlnet_cond"] = np.ascontiguousarray(hint)
            scaled = self.ramp or unit.scale != 1.0
            self.units.append((unit, engine, feeds, self._scales(unit.scale) if scaled else None))

    def residuals(
        self, step: int, steps: int, latents: np.ndarray, timestep: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The UNet's residual inputs at `step` of the `steps` the loop runs (diffusers'
        `controlnet_keep`: a ControlNet acts from `start` to `end` of them), from the latents
        the UNet reads (unguided rows, then guided ones)."""
        summed: dict[str, np.ndarray] | None = None
        for unit, engine, feeds, scales in self.units:
            if step / steps < unit.start or (step + 1) / steps > unit.end:
                continue
            if self.guess:
                feeds["sample"] = np.ascontiguousarray(np.split(latents, 2)[1])
                feeds["timestep"] = np.split(timestep, 2)[1]
            else:
                feeds["sample"], feeds["timestep"] = np.ascontiguousarray(latents), timestep
            outputs = engine.infer(feeds)
            if scales is not None:
                for name, scale in zip(self.order, scales, strict=True):
                    outputs[name] *= scale
            if summed is None:
                summed = {name: outputs[name] for name in self.order}
            else:
                for name in self.order:
                    summed[name] += outputs[name]
        if summed is None:
            return self.zeros
        if self.guess:  # the unguided rows (the first half, never written) take nothing
            for name, value in summed.items():
                np.copyto(np.split(self.guessed[name], 2)[1], value)
            return self.guessed
        return summed

    def _scales(self, scale: float) -> np.ndarray:
        """Each residual's factor: the scale, in guess mode ramped from 0.1 to 1 over the
        down residuals and the middle one (diffusers' `torch.logspace(-1, 0, n)`)."""
        count = len(self.order)
        if not self.ramp:
            return np.full(count, scale, np.float32)
        return (np.logspace(-1, 0, count, dtype=np.float32) * np.float32(scale)).astype(np.float32)
