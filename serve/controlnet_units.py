"""ControlNets over HTTP: /v1's `control` units, and the A1111 web UI ControlNet extension's
(`alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`, and its /controlnet/model_list,
/module_list and /version routes, which its clients ask first)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image

from sdtrt.errors import InputError
from sdtrt.runtime.hint_preprocessors import PREPROCESSORS, run_preprocessor
from sdtrt.serve.a1111_dialect import checkpoint_name
from sdtrt.serve.encoding import image_from_base64
from sdtrt.serve.jobs import ControlArguments
from sdtrt.serve.schemas import ControlUnitBody

controlnet_router = APIRouter(prefix="/controlnet", tags=["A1111 API"])

# The extension's control modes: "Balanced" is diffusers' ControlNet; "ControlNet is more
# important" (the extension's former guess mode: the hint on the prompt's rows only, deep
# blocks weighted most) is diffusers' guess mode. "My prompt is more important" has no
# counterpart in diffusers, so it is refused rather than approximated.
_MODES = {0: False, "Balanced": False, 2: True, "ControlNet is more important": True}
# The extension's defaults for a unit that leaves them out (-1 also means "the default").
_PROCESSOR_RESOLUTION = 512


def v1_controls(
    units: Sequence[ControlUnitBody] | None, guess_mode: bool
) -> ControlArguments | None:
    """The ControlNets of a /v1 request."""
    if not units:
        if guess_mode:
            raise InputError("guess_mode applies to ControlNets: give control units")
        return None
    names = [unit.controlnet for unit in units]
    return ControlArguments(
        images=tuple(
            run_preprocessor(
                unit.preprocessor,
                image_from_base64(unit.image, f"control[{i}].image"),
                unit.thresholds or (None, None),
            )
            for i, unit in enumerate(units)
        ),
        names=_all_or_none(names),
        scales=_all_or_none([unit.scale for unit in units]),
        starts=tuple(unit.start for unit in units),
        ends=tuple(unit.end for unit in units),
        guess_mode=guess_mode,
    )


def a1111_controls(extra: Mapping[str, Any] | None) -> ControlArguments | None:
    """The enabled units of an A1111 request's ControlNet script, or None without any."""
    scripts = (extra or {}).get("alwayson_scripts")
    if not isinstance(scripts, dict):
        return None
    script = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        return None
    units = [unit for unit in args if isinstance(unit, dict) and unit.get("enabled", True)]
    units = [unit for unit in units if _hint_text(unit)]  # a unit without a hint is off
    if not units:
        return None
    modes = {_mode(unit, i) for i, unit in enumerate(units)}
    if len(modes) > 1:
        raise InputError("ControlNet units with different control modes cannot run in one call")
    return ControlArguments(
        images=tuple(_a1111_hint(unit, i) for i, unit in enumerate(units)),
        names=tuple(_model_name(unit, i) for i, unit in enumerate(units)),
        scales=tuple(_number(unit, "weight", 1.0, i) for i, unit in enumerate(units)),
        starts=tuple(_number(unit, "guidance_start", 0.0, i) for i, unit in enumerate(units)),
        ends=tuple(_number(unit, "guidance_end", 1.0, i) for i, unit in enumerate(units)),
        guess_mode=modes.pop(),
    )


def _all_or_none(values: list[Any]) -> tuple[Any, ...] | None:
    given = [value is not None for value in values]
    if any(given) and not all(given):
        raise InputError("name each control unit's ControlNet and scale in every unit, or in none")
    return tuple(values) if all(given) else None


def _hint_text(unit: Mapping[str, Any]) -> str:
    """The unit's hint as base64: `image` (a string, or {"image": ...} in some clients) or the
    older `input_image`."""
    image = unit.get("image") or unit.get("input_image") or ""
    if isinstance(image, dict):
        image = image.get("image") or ""
    return image if isinstance(image, str) else ""


def _a1111_hint(unit: Mapping[str, Any], index: int) -> Image.Image:
    """The unit's hint, through its preprocessor (`module`, with `threshold_a`, `threshold_b`
    and `processor_res` as the extension reads them)."""
    module = unit.get("module") or "none"
    if not isinstance(module, str):
        raise InputError(f"ControlNet unit {index}: module must be a name, got {module!r}")
    low, high = (
        None if unit.get(key, -1) == -1 else _number(unit, key, 0.0, index)
        for key in ("threshold_a", "threshold_b")
    )
    resolution = _number(unit, "processor_res", _PROCESSOR_RESOLUTION, index)
    image = image_from_base64(_hint_text(unit), f"ControlNet unit {index} image")
    try:
        return run_preprocessor(
            module.lower(),
            image,
            (low, high),
            _PROCESSOR_RESOLUTION if resolution == -1 else int(resolution),
        )
    except InputError as error:
        raise InputError(f"ControlNet unit {index}: {error}") from error


def _model_name(unit: Mapping[str, Any], index: int) -> str:
    """A ControlNet's name from the extension's model title, "NAME [HASH]"."""
    title = unit.get("model")
    if not isinstance(title, str) or title.strip() in ("", "None"):
        raise InputError(f"ControlNet unit {index} names no model; see /controlnet/model_list")
    return checkpoint_name(title)


def _mode(unit: Mapping[str, Any], index: int) -> bool:
    mode = unit.get("control_mode", 0)
    if mode not in _MODES:
        raise InputError(
            f"ControlNet unit {index}: control mode {mode!r} is not available; choose "
            "'Balanced' or 'ControlNet is more important'"
        )
    return _MODES[mode]


def _number(unit: Mapping[str, Any], key: str, default: float, index: int) -> float:
    value = unit.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"ControlNet unit {index}: {key} must be a number, got {value!r}")
    return float(value)


@controlnet_router.get("/model_list")
def model_list(request: Request) -> dict[str, list[str]]:
    """The ControlNets built with the server's models, as the extension lists its models."""
    models = request.app.state.models
    names = [
        controlnet.name
        for name in models.names
        for controlnet in models.manifest(name).model.controlnets
    ]
    return {"model_list": list(dict.fromkeys(names))}


@controlnet_router.get("/module_list")
def module_list() -> dict[str, list[str]]:
    """The preprocessors that run here (any other hint comes processed, with module none)."""
    return {"module_list": ["none", *PREPROCESSORS]}


@controlnet_router.get("/version")
def version() -> dict[str, int]:
    return {"version": 2}
