"""A Triton Inference Server model repository around an engine directory.

Writes OUT/NAME/config.pbtxt (Python backend; prompt, negative prompt, steps, guidance, seed,
size, scheduler and batch as per-request inputs), OUT/NAME/1/model.py and OUT/NAME/1/engines
(a copy of the engine directory). Built in a temporary sibling and renamed into place whole.
"""

from __future__ import annotations

import os
import secrets
import shutil
from importlib import resources
from pathlib import Path

from sdtrt.engine.manifest import read_manifest
from sdtrt.errors import InputError
from sdtrt.serve.service import on_gpu

# (name, Triton type, optional): every input but the prompt has the `run` command's default.
INPUTS = (
    ("PROMPT", "TYPE_STRING", False),
    ("NEGATIVE_PROMPT", "TYPE_STRING", True),
    ("STEPS", "TYPE_INT32", True),
    ("GUIDANCE", "TYPE_FP32", True),
    ("SEED", "TYPE_INT64", True),  # -1 or absent: random
    ("HEIGHT", "TYPE_INT32", True),
    ("WIDTH", "TYPE_INT32", True),
    ("SCHEDULER", "TYPE_STRING", True),
    ("BATCH", "TYPE_INT32", True),
)
OUTPUTS = (
    ("IMAGES", "TYPE_UINT8", "-1, -1, -1, 3"),  # (batch, height, width, RGB)
    ("SEED_USED", "TYPE_UINT64", "1"),
)


def config_text(name: str, instances: int, gpu: bool, max_steps: int) -> str:
    lines = [f'name: "{name}"', 'backend: "python"', "max_batch_size: 0", "input ["]
    entries = [
        f'  {{ name: "{n}" data_type: {t} dims: [ 1 ]{" optional: true" if o else ""} }}'
        for n, t, o in INPUTS
    ]
    lines += [",\n".join(entries), "]", "output ["]
    lines.append(
        ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in OUTPUTS)
    )
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    lines += ["]", f"instance_group [ {{ count: {instances} kind: {kind} }} ]"]
    # The limits `sdtrt serve` keeps, kept by the model (Triton's front end knows no prompts).
    limits = {"max_steps": max_steps, "max_prompt_chars": 2000, "max_images": 16}
    for key, value in limits.items():
        lines.append(f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    lines.append('parameters: { key: "engine_dir" value: { string_value: "engines" } }')
    return "\n".join(lines) + "\n"


def export_triton(
    directory: Path,
    output: Path,
    name: str = "sdtrt_txt2img",
    instances: int = 1,
    max_steps: int = 150,
) -> Path:
    """Write the model NAME into the repository OUTPUT; returns the model's folder."""
    manifest = read_manifest(directory)
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise InputError(f"--name must be letters, digits, '_' or '-', got {name!r}")
    if instances < 1:
        raise InputError(f"--instances must be at least 1, got {instances}")
    if max_steps < 1:
        raise InputError(f"--max-steps must be at least 1, got {max_steps}")
    target = output / name
    if target.exists():
        raise InputError(f"{target} already exists; remove it or choose another --name")
    output.mkdir(parents=True, exist_ok=True)
    staging = output / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        version = staging / "1"
        version.mkdir(parents=True)
        text = config_text(name, instances, on_gpu(manifest), max_steps)
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        model = resources.files("sdtrt.serve").joinpath("triton_model.py").read_text("utf-8")
        (version / "model.py").write_text(model, encoding="utf-8")
        shutil.copytree(directory, version / "engines")
        os.replace(staging, target)
    except OSError as error:
        raise InputError(f"cannot write {target}: {error.strerror or error}") from error
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
