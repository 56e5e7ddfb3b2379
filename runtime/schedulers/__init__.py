"""Pure-numpy schedulers, each configured from the model's scheduler config like diffusers'."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import Noise, Scheduler
from sdtrt.runtime.schedulers.ddim import DDIMScheduler
from sdtrt.runtime.schedulers.euler import EulerScheduler
from sdtrt.runtime.schedulers.pndm import PNDMScheduler

SCHEDULERS: dict[str, type[Scheduler[Any, Any]]] = {
    cls.name: cls for cls in (DDIMScheduler, EulerScheduler, PNDMScheduler)
}
_ALIASES = {cls.diffusers_name.lower(): cls.name for cls in SCHEDULERS.values()}


def scheduler_names() -> list[str]:
    return sorted(SCHEDULERS)


def resolve_scheduler_name(name: str) -> str:
    """The short name for a short name (`euler`) or diffusers class (`EulerDiscreteScheduler`)."""
    key = name.strip().lower()
    if key in SCHEDULERS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise InputError(f"unknown scheduler '{name}'; choose one of: {', '.join(scheduler_names())}")


def create_scheduler(name: str, model_config: Mapping[str, Any]) -> Scheduler[Any, Any]:
    return SCHEDULERS[resolve_scheduler_name(name)](model_config)


__all__ = [
    "Noise",
    "Scheduler",
    "SCHEDULERS",
    "create_scheduler",
    "resolve_scheduler_name",
    "scheduler_names",
]
