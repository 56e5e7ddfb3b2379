"""The engine directory's layout: every file name the build writes and the runtime finds by
convention. A backend's own engine files are named in its manifest record, not here.

    manifest.json                      written last: a directory without it is not an engine dir
    scheduler/scheduler_config.json    the model's scheduler config, as the model has it
    <tokenizer folder>/tokenizer.json  per text encoder (tokenizer/, tokenizer_2/)
    <component>/component.json         the component's record, kept for resuming a build
    <component>/model.onnx[.data]      the exported graph (its weights beside it when big)
    <component>/reference_fp32.onnx    guarded fp16 builds: the fp32 graph it was checked against
    <component>/lora_weights.json      LoRA-able networks: torch weight -> ONNX initializer
    <component>/<engine files>         the backend's, as the component record names them
    controlnet/<name>/                 each ControlNet's network, a component like the others
"""

from __future__ import annotations

MANIFEST_NAME = "manifest.json"
SCHEDULER_FILE = "scheduler/scheduler_config.json"
TOKENIZER_FILE_NAME = "tokenizer.json"  # in the tokenizer's own folder, as in the model
RECORD_NAME = "component.json"
ONNX_NAME = "model.onnx"
REFERENCE_NAME = "reference_fp32.onnx"
WEIGHT_MAP = "lora_weights.json"


def controlnet_component(name: str) -> str:
    """The network of the ControlNet built under `name`."""
    return f"controlnet/{name}"
