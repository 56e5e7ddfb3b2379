"""How the A1111 API's requests read on each model: its sampler names and schedule types, and
its prompt syntax."""

from __future__ import annotations

import re

from sdtrt.errors import InputError
from sdtrt.runtime.families import Family
from sdtrt.runtime.prompt_syntax import is_plain
from sdtrt.runtime.schedulers import resolve_scheduler_name


def checkpoint_name(title: str) -> str:
    """A model's name from an A1111 model title, "NAME [HASH]" (checkpoints, ControlNets)."""
    return re.sub(r"\s*\[[0-9a-f]+\]$", "", title.strip())


# A1111 sampler name -> (sdtrt scheduler, A1111's aliases).
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    "DPM++ 2M": ("dpmpp_2m", ["k_dpmpp_2m"]),
    "DPM++ 2M SDE": ("dpmpp_sde", ["k_dpmpp_2m_sde"]),
    "Euler a": ("euler_a", ["k_euler_a", "k_euler_ancestral"]),
    "Euler": ("euler", ["k_euler"]),
    "LMS": ("lms", ["k_lms"]),
    "Heun": ("heun", ["k_heun"]),
    "DDIM": ("ddim", ["ddim"]),
    "DDPM": ("ddpm", ["ddpm"]),
    "PLMS": ("pndm", ["plms"]),
    "UniPC": ("unipc", ["unipc"]),
    "DEIS": ("deis", ["deis"]),
    "LCM": ("lcm", ["k_lcm"]),
}
# Names older A1111 releases used before the schedule became its own field.
_LEGACY = {"dpm++ 2m karras": "dpmpp_2m_karras"}
_KARRAS = {"dpmpp_2m": "dpmpp_2m_karras", "dpmpp_2m_karras": "dpmpp_2m_karras"}
SCHEDULE_TYPES = [
    {"name": "automatic", "label": "Automatic", "default_rho": -1.0},
    {"name": "karras", "label": "Karras", "default_rho": 7.0},
]


def scheduler_for(family: Family, sampler: str, schedule: str | None) -> str:
    """An A1111 sampler (or sdtrt/diffusers name) and schedule type to an sdtrt scheduler for
    a model of `family`: A1111's Euler on a flow-matching model (SD 3) is flow matching's, as
    the web UI's forks that run SD 3 read it."""
    found = map_sampler(sampler, schedule)
    return "flow_euler" if family.flow_matching and found == "euler" else found


def map_sampler(sampler: str, schedule: str | None) -> str:
    """An A1111 sampler (or sdtrt/diffusers name) and schedule type to an sdtrt scheduler."""
    key = sampler.strip().lower()
    named = (
        name
        for a1111, (name, aliases) in SAMPLERS.items()
        if key == a1111.lower() or key in aliases
    )
    found = next(named, _LEGACY.get(key))
    if found is None:
        try:
            found = resolve_scheduler_name(sampler)
        except InputError as error:
            raise InputError(
                f"unknown sampler '{sampler}'; choose one of: {', '.join(SAMPLERS)}"
            ) from error
    kind = (schedule or "automatic").strip().lower()
    if kind == "automatic":
        return found
    if kind == "karras":
        if found not in _KARRAS:
            raise InputError(f"schedule type Karras is available with DPM++ 2M only, not {sampler}")
        return _KARRAS[found]
    raise InputError(f"unknown schedule type '{schedule}'; choose Automatic or Karras")


def prompt_syntax_for(family: Family, prompt: str, negative_prompt: str) -> str:
    """What A1111's clients write, (word:1.2), [word] and BREAK, where the model reads it;
    plain prompts alone where it does not."""
    if family.reads_a1111_prompts:
        return "a1111"
    if not (is_plain(prompt) and is_plain(negative_prompt)):
        raise InputError(
            f"this {family.name} model reads prompts as plain text: leave out A1111's "
            "weights, brackets, escapes and BREAK"
        )
    return "diffusers"
