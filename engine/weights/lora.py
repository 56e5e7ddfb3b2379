"""LoRA files to weight deltas, in numpy: one reading for merging at build and switching at run.

Two layouts are read, both as .safetensors:

- diffusers / PEFT: `unet.<module>.lora_A.weight` and `lora_B.weight` (older diffusers files:
  `lora.down` / `lora.up`, `lora_linear_layer.down` / `.up`), prefixed `unet.` or
  `text_encoder.`; alpha from `<module>.alpha` keys or the `lora_adapter_metadata` header that
  diffusers writes, else alpha = rank (scale 1, PEFT's convention);
- kohya (A1111, ComfyUI, sd-scripts): `lora_unet_<module>` / `lora_te_<module>` (SDXL:
  `lora_te1_`, `lora_te2_`) with the dots of the module path written as underscores,
  `.lora_down.weight`, `.lora_up.weight` and an optional `.alpha`; SDXL's UNet layers under
  their SGM names (engine/weights/sgm_names.py).

A kohya name is resolved against the model's real module names rather than by string rules, so
`transformer_blocks` or `to_out_0` come back unambiguous. Each layer adds
`scale * alpha / rank * up @ down` to its module's weight, as PEFT's merge does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from sdtrt.engine.weights.safetensors import SafetensorsFile
from sdtrt.engine.weights.sgm_names import sgm_names
from sdtrt.errors import InputError

# The networks a LoRA can touch (those a model has), by the prefixes the two layouts give them.
LORA_COMPONENTS = ("text_encoder", "text_encoder_2", "unet")
DIFFUSERS_PREFIXES = {
    "unet.": "unet",
    "text_encoder.": "text_encoder",
    "text_encoder_2.": "text_encoder_2",
}
KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
DOWN_SUFFIXES = (".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")
UP_SUFFIXES = (".lora_B.weight", ".lora.up.weight", ".lora_linear_layer.up.weight")
KOHYA_DOWN, KOHYA_UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
METADATA_KEY = "lora_adapter_metadata"
# Adapters that are not a plain low-rank product; merging them as LoRA would be wrong.
UNSUPPORTED = ("dora_scale", "lora_magnitude_vector", "hada_", "lokr_", "lora_mid")


def lora_components(present: Iterable[str]) -> tuple[str, ...]:
    """The networks among `present` a LoRA may change, in LORA_COMPONENTS' order."""
    names = set(present)
    return tuple(name for name in LORA_COMPONENTS if name in names)


# Which weights a LoRA may change: component -> weight name -> shape.
WeightShapes = Mapping[str, Mapping[str, tuple[int, ...]]]


class LoraSource(BaseModel):
    """A LoRA file and the strength to apply it at (diffusers' `lora_scale`)."""

    model_config = ConfigDict(frozen=True)

    path: Path
    scale: float = 1.0

    def describe(self) -> str:
        return f"{self.path.name}:{self.scale:g}"


def parse_lora_arg(text: str) -> LoraSource:
    """'FILE' or 'FILE:SCALE' as typed on the command line; the file must exist."""
    path_text, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            path_text, scale = head, float(tail)
        except ValueError:
            pass  # a colon inside the file name
    if not np.isfinite(scale):
        raise InputError(f"--lora scale must be a finite number, got '{text}'")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise InputError(f"LoRA file {path} does not exist; give FILE.safetensors[:SCALE]")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"LoRA file {path} is not a .safetensors file; only those are read")
    return LoraSource(path=path, scale=scale)


def as_lora_source(item: LoraSource | str | Path | tuple[str | Path, float]) -> LoraSource:
    """An API argument as a LoraSource: a source, a file (scale 1) or a (file, scale) pair."""
    if isinstance(item, LoraSource):
        source = item
    elif isinstance(item, tuple):
        source = LoraSource(path=Path(item[0]), scale=float(item[1]))
    else:
        source = LoraSource(path=Path(item))
    if not source.path.is_file():
        raise InputError(f"LoRA file {source.path} does not exist")
    if not np.isfinite(source.scale):
        raise InputError(f"LoRA scale must be a finite number, got {source.scale}")
    return source


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank update: `scale * (up @ down)` added to `component`'s `module`.weight."""

    component: str
    module: str
    down: np.ndarray  # (rank, in) or (rank, in, kh, kw)
    up: np.ndarray  # (out, rank) or (out, rank, 1, 1)
    scale: float  # strength * alpha / rank

    @property
    def weight(self) -> str:
        return f"{self.module}.weight"

    def delta(self, shape: tuple[int, ...]) -> np.ndarray:
        """The change to a weight of `shape`, float32; a conv LoRA on a linear weight (or the
        reverse, as SD 2.x's linear projections make) is reshaped when the sizes agree."""
        rank = self.down.shape[0]
        down = self.down.astype(np.float32).reshape(rank, -1)
        up = self.up.astype(np.float32).reshape(self.up.shape[0], rank)
        product = (up @ down) * np.float32(self.scale)
        if product.size != int(np.prod(shape)):
            raise InputError(
                f"LoRA layer for {self.component} {self.module} has shape "
                f"{tuple(self.up.shape[:1]) + tuple(self.down.shape[1:])}, the model's weight "
                f"{shape}: the LoRA was made for another model"
            )
        return product.reshape(shape)


def _metadata_alphas(metadata: Mapping[str, str], component: str) -> tuple[float | None, dict]:
    """diffusers' saved adapter config: the default alpha and per-module alpha patterns."""
    if METADATA_KEY not in metadata:
        return None, {}
    try:
        config = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        return None, {}
    if config.get(f"{component}.use_dora") or config.get(f"{component}.use_rslora"):
        raise InputError("DoRA and rsLoRA adapters are not supported; use a plain LoRA")
    alpha = config.get(f"{component}.lora_alpha")
    return (float(alpha) if alpha is not None else None), dict(
        config.get(f"{component}.alpha_pattern") or {}
    )


def _pattern_alpha(patterns: Mapping[str, float], module: str) -> float | None:
    """PEFT's rule: a pattern applies when it matches the end of the module path."""
    for pattern, alpha in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return None


def _aliases(module: str) -> tuple[str, ...]:
    """Names a LoRA may give `module`: its path, and that path in kohya's underscores, each
    with and without CLIP's `text_model.` (transformers 5 dropped that level; files keep it)."""
    bare = module.removeprefix("text_model.")
    names = (bare, "text_model." + bare)
    return names + tuple(name.replace(".", "_") for name in names)


def _alias_table(weights: Mapping[str, tuple[int, ...]], component: str) -> dict[str, str]:
    """Every name a LoRA may give a weighted module of one component -> the module's path
    (a UNet's under SGM's names too, in kohya's underscores)."""
    modules = [name[: -len(".weight")] for name in weights if name.endswith(".weight")]
    table = {alias: module for module in modules for alias in _aliases(module)}
    if component == "unet":
        for module, sgm in sgm_names(modules).items():
            table.setdefault(sgm.replace(".", "_"), module)
    return table


def _split_key(key: str) -> tuple[str, str, str] | None:
    """(layout, component, rest) for a key of either layout; None for keys of neither."""
    for prefix, component in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            return "kohya", component, key[len(prefix) :]
    for prefix, component in DIFFUSERS_PREFIXES.items():
        if key.startswith(prefix):
            return "diffusers", component, key[len(prefix) :]
    return None


def _diffusers_module(rest: str) -> tuple[str, str] | None:
    """(module, part) of a diffusers key body, part one of down, up, alpha."""
    for part, suffixes in (("down", DOWN_SUFFIXES), ("up", UP_SUFFIXES), ("alpha", (ALPHA,))):
        for suffix in suffixes:
            if rest.endswith(suffix):
                module = rest[: -len(suffix)]
                # diffusers' attention-processor files: `attn1.processor.to_q_lora.down.weight`
                module = re.sub(r"\.processor\.(to_[qkv])_lora$", r".\1", module)
                module = re.sub(r"\.processor\.to_out_lora$", ".to_out.0", module)
                return module, part
    return None


def read_lora(source: LoraSource, shapes: WeightShapes) -> list[LoraLayer]:
    """The layers of `source`, each checked against the model's weights in `shapes`."""
    file = SafetensorsFile(source.path)
    aliases = {c: _alias_table(weights, c) for c, weights in shapes.items()}
    parts: dict[tuple[str, str], dict[str, str]] = {}
    for key in file.keys():
        if any(marker in key for marker in UNSUPPORTED):
            raise InputError(
                f"{source.path.name} holds {key}: a LyCORIS/DoRA adapter, which sdtrt does "
                "not merge; use a plain LoRA"
            )
        split = _split_key(key)
        if split is None:
            raise InputError(
                f"{source.path.name} is not a LoRA sdtrt reads (unexpected tensor {key!r}); "
                "expected diffusers (unet./text_encoder./text_encoder_2.) or kohya (lora_unet_/"
                "lora_te_/lora_te1_/lora_te2_) keys"
            )
        layout, component, rest = split
        if layout == "kohya":
            body, dot, suffix = rest.partition(".")
            part = {KOHYA_DOWN: "down", KOHYA_UP: "up", ALPHA: "alpha"}.get(dot + suffix)
            module = aliases.get(component, {}).get(body)
            if part is None:
                raise InputError(f"{source.path.name}: unexpected LoRA tensor {key!r}")
            if module is None:
                raise InputError(
                    f"{source.path.name} changes {component} layer {body}, which this model "
                    "does not have: the LoRA was made for another architecture"
                )
        else:
            found = _diffusers_module(rest)
            if found is None:
                raise InputError(f"{source.path.name}: unexpected LoRA tensor {key!r}")
            module, part = found
            module = aliases.get(component, {}).get(module, module)
        parts.setdefault((component, module), {})[part] = key
    layers = []
    for (component, module), keys in parts.items():
        if "down" not in keys or "up" not in keys:
            raise InputError(
                f"{source.path.name}: {component} {module} lacks its "
                f"{'down' if 'down' not in keys else 'up'} matrix; the file is incomplete"
            )
        if f"{module}.weight" not in shapes.get(component, {}):
            raise InputError(
                f"{source.path.name} changes {component} layer {module}, which this model does "
                "not have: the LoRA was made for another architecture"
            )
        down, up = file.read(keys["down"]), file.read(keys["up"])
        rank = down.shape[0]
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != rank:
            raise InputError(
                f"{source.path.name}: {component} {module} has matrices of shapes "
                f"{down.shape} and {up.shape}, which do not form a low-rank product"
            )
        default_alpha, patterns = _metadata_alphas(file.metadata, component)
        if "alpha" in keys:
            alpha = float(file.read(keys["alpha"]).reshape(-1)[0])
        else:
            alpha = next(
                (a for a in (_pattern_alpha(patterns, module), default_alpha) if a is not None),
                float(rank),
            )
        layers.append(LoraLayer(component, module, down, up, source.scale * alpha / rank))
    if not layers:
        raise InputError(f"{source.path.name} holds no LoRA layers")
    return layers


def lora_deltas(
    sources: Sequence[LoraSource], shapes: WeightShapes
) -> Iterator[tuple[str, str, np.ndarray]]:
    """(component, weight name, float32 delta) per changed weight, all LoRAs summed in order."""
    totals: dict[tuple[str, str], np.ndarray] = {}
    for source in sources:
        for layer in read_lora(source, shapes):
            key = (layer.component, layer.weight)
            delta = layer.delta(tuple(shapes[layer.component][layer.weight]))
            totals[key] = totals[key] + delta if key in totals else delta
    for (component, weight), delta in sorted(totals.items()):
        yield component, weight, delta
