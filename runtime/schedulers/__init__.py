"""Pure-numpy schedulers, each configured from the model's scheduler config like diffusers'.

A scheduler is chosen by a short name (`euler_a`, `dpmpp_2m_karras`, ...), which may fix a few
config keys on top of the model's own (Karras sigmas, the SDE variant), or by a diffusers class
name (`EulerAncestralDiscreteScheduler`), which takes the model's config exactly as
`Class.from_config(pipe.scheduler.config)` would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import Noise, Scheduler
from sdtrt.runtime.schedulers.ddim import DDIMScheduler
from sdtrt.runtime.schedulers.ddpm import DDPMScheduler
from sdtrt.runtime.schedulers.deis import DEISScheduler
from sdtrt.runtime.schedulers.dpm_solver import DPMSolverMultistepScheduler
from sdtrt.runtime.schedulers.euler import EulerAncestralScheduler, EulerScheduler
from sdtrt.runtime.schedulers.flow_match import FlowMatchEulerScheduler, FlowMatchHeunScheduler
from sdtrt.runtime.schedulers.heun import HeunScheduler
from sdtrt.runtime.schedulers.lcm import LCMScheduler
from sdtrt.runtime.schedulers.lms import LMSScheduler
from sdtrt.runtime.schedulers.pndm import PNDMScheduler
from sdtrt.runtime.schedulers.unipc import UniPCScheduler


@dataclass(frozen=True)
class SchedulerChoice:
    cls: type[Scheduler[Any, Any]]
    overrides: Mapping[str, Any] = field(default_factory=dict)


_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
SCHEDULERS: dict[str, SchedulerChoice] = {
    "ddim": SchedulerChoice(DDIMScheduler),
    "ddpm": SchedulerChoice(DDPMScheduler),
    "deis": SchedulerChoice(DEISScheduler),
    "dpmpp_2m": SchedulerChoice(
        DPMSolverMultistepScheduler, {**_DPM_2M, "use_karras_sigmas": False}
    ),
    "dpmpp_2m_karras": SchedulerChoice(
        DPMSolverMultistepScheduler, {**_DPM_2M, "use_karras_sigmas": True}
    ),
    "dpmpp_sde": SchedulerChoice(
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "euler": SchedulerChoice(EulerScheduler),
    "euler_a": SchedulerChoice(EulerAncestralScheduler),
    "flow_euler": SchedulerChoice(FlowMatchEulerScheduler),
    "flow_heun": SchedulerChoice(FlowMatchHeunScheduler),
    "heun": SchedulerChoice(HeunScheduler),
    "lcm": SchedulerChoice(LCMScheduler),
    "lms": SchedulerChoice(LMSScheduler),
    "pndm": SchedulerChoice(PNDMScheduler),
    "unipc": SchedulerChoice(UniPCScheduler),
}
# Class names select the class with the model's config untouched; where a short name does
# exactly that, it is the canonical name.
_CLASSES = {choice.cls for choice in SCHEDULERS.values()}
_BY_CLASS_NAME: dict[str, str] = {}
for _cls in _CLASSES:
    plain = [
        name for name, choice in SCHEDULERS.items() if choice.cls is _cls and not choice.overrides
    ]
    _BY_CLASS_NAME[_cls.diffusers_name.lower()] = plain[0] if plain else _cls.diffusers_name
    if not plain:
        SCHEDULERS[_cls.diffusers_name] = SchedulerChoice(_cls)


def scheduler_names() -> list[str]:
    """The short names, for help texts and error messages."""
    return sorted(name for name in SCHEDULERS if name.islower())


def resolve_scheduler_name(name: str) -> str:
    """The canonical name for a short name (`euler_a`) or a diffusers class name."""
    key = name.strip()
    if key.lower() in SCHEDULERS:
        return key.lower()
    if key.lower() in _BY_CLASS_NAME:
        return _BY_CLASS_NAME[key.lower()]
    raise InputError(
        f"unknown scheduler '{name}'; choose one of: {', '.join(scheduler_names())} "
        "(or a diffusers scheduler class name)"
    )


def create_scheduler(name: str, model_config: Mapping[str, Any]) -> Scheduler[Any, Any]:
    choice = SCHEDULERS[resolve_scheduler_name(name)]
    return choice.cls({**model_config, **choice.overrides})


__all__ = [
    "Noise",
    "Scheduler",
    "SCHEDULERS",
    "SchedulerChoice",
    "create_scheduler",
    "resolve_scheduler_name",
    "scheduler_names",
]
