"""manifest.json: the only contract between a build and the runtime."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from sdtrt.engine.layout import MANIFEST_NAME
from sdtrt.engine.options import BuildOptions, ExportOptions, Precision
from sdtrt.engine.ranges import BuildRanges, Size
from sdtrt.engine.tensors import ComponentIO
from sdtrt.errors import ArtifactError

FORMAT_VERSION = 1
# ModelInfo.family: SD 1.x/2.x (latent consistency models among them), SDXL, and SD 3.
STABLE_DIFFUSION = "stable-diffusion"
STABLE_DIFFUSION_XL = "stable-diffusion-xl"
STABLE_DIFFUSION_3 = "stable-diffusion-3"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


def _inside(relative: str) -> str:
    """A path that stays inside the engine directory: a manifest (which anyone may hand over
    with engines) must not make the runtime read files elsewhere."""
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.anchor or ".." in posix.parts or ".." in windows.parts:
        raise ValueError(f"{relative!r} is not a path inside the engine directory")
    return relative


# A path relative to the engine directory, never leaving it.
Inside = Annotated[str, AfterValidator(_inside)]


class Validation(_Frozen):
    """How far one output of a built engine is from the PyTorch module it was exported from."""

    output: str
    max_abs_error: float
    output_scale: float  # max |torch output|
    relative_error: float  # max_abs_error / output_scale
    tolerance: float  # the relative error the build allowed


class Fp32Island(_Frozen):
    """A node an fp16 build keeps in fp32 beyond the fixed list, found by the fp16 guard."""

    node: str
    op: str
    reason: str  # the overflow or error vs fp32 that put it there


class GraphCleanup(_Frozen):
    """What constant folding removed from the exported graph before any backend saw it."""

    exported_nodes: int  # as the torch exporter wrote the graph; Constant nodes not counted
    kept_nodes: int
    removed: dict[str, int]  # op type -> nodes of that type folded away or found dead


class ComponentRecord(_Frozen):
    """One built network: its files, how it was built, and how well it matched torch."""

    name: str
    onnx: Inside  # path relative to the engine directory
    engine: Inside  # the file the backend loads
    files: dict[Inside, int]  # every file of this component, relative path -> size in bytes
    backend: str
    backend_version: str
    precision: Precision
    io: ComponentIO
    settings: dict[str, Any]  # backend-specific load settings, read back by the backend
    validation: list[Validation]
    build_key: str  # digest of everything the build depended on; equal key, reusable build
    build_seconds: float
    # Guarded fp16 builds only (older manifests have neither): the fp32 islands, and the fp32
    # graph the engine was compared with, relative to the engine directory.
    fp32_islands: list[Fp32Island] = []
    reference_onnx: Inside | None = None
    cleanup: GraphCleanup | None = None  # older manifests have none


class TinyVaeInfo(_Frozen):
    """A tiny VAE built beside the model's own (`--tiny-vae`): the latent scaling it was trained
    with (diffusers' AutoencoderTiny config), and the digest of its files."""

    scaling_factor: float
    shift_factor: float | None = None
    digest: str


class ControlNetInfo(_Frozen):
    """A ControlNet built beside the model (`--controlnet`), as the network
    `controlnet/<name>`, and the digest of its files."""

    name: str
    digest: str


class ModelInfo(_Frozen):
    """What the runtime needs to know of the model beyond its networks."""

    family: str
    name: str
    native_size: Size
    vae_scale_factor: int
    latent_channels: int
    vae_scaling_factor: float
    vae_shift_factor: float | None = None
    text_max_length: int
    # A latent consistency model's UNet embeds the guidance scale (timestep_cond) instead of
    # running guided and unguided rows.
    guidance_embedding_dim: int | None = None
    # SDXL: a missing negative prompt means zero conditioning, not that of "".
    force_zeros_for_empty_prompt: bool = False
    # SDXL refiner: an aesthetic score in place of the target size among the time ids.
    requires_aesthetics_score: bool = False
    # SD 3: the width of the transformer's text tokens (T5's; CLIP's states are padded to it),
    # and the longest T5 sequence its engines take.
    joint_attention_dim: int | None = None
    max_sequence_length: int | None = None
    patch_size: int | None = None  # the transformer's latent patches
    transformer_layers: int | None = None  # its joint blocks, which skip-layer guidance skips
    # A model distilled to sample in a few steps without guidance (SD 3.5 Large Turbo), which
    # its name says: those are its defaults.
    few_step: bool = False
    tiny_vae: TinyVaeInfo | None = None  # built with --tiny-vae
    controlnets: tuple[ControlNetInfo, ...] = ()  # built with --controlnet, in that order
    # The UNet's `downsample_padding`, which sizes the ControlNet residuals of odd latent sizes
    # (engine/residuals.py).
    downsample_padding: int = 1


class SourceInfo(_Frozen):
    kind: Literal["folder", "preset", "hub", "file"]
    ref: str
    content_hash: str


class Manifest(_Frozen):
    format_version: int
    sdtrt_version: str
    created: str
    source: SourceInfo
    model: ModelInfo
    ranges: BuildRanges
    build_options: BuildOptions
    export_options: ExportOptions
    components: dict[str, ComponentRecord]
    tokenizer: Inside  # the first text encoder's
    scheduler_config: Inside
    # Text-encoder component -> its tokenizer file; older manifests have none, and one encoder.
    tokenizers: dict[str, Inside] = {}
    # What `auto` picked ("backend", "precision") and why, as the build said it.
    picked: dict[str, str] = {}

    @property
    def text_encoders(self) -> dict[str, str]:
        """Text-encoder component -> tokenizer file, in the order their states are joined."""
        return self.tokenizers or {"text_encoder": self.tokenizer}


def read_manifest(directory: Path) -> Manifest:
    """Read and check `directory`/manifest.json; every failure is one ArtifactError line."""
    if not directory.exists():
        raise ArtifactError(
            f"engine directory {directory} does not exist; "
            f"create it with `sdtrt build MODEL --output {directory}`"
        )
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is a file, not an sdtrt engine directory")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{directory} is not an sdtrt engine directory (no {MANIFEST_NAME}); "
            "build one with `sdtrt build`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); rebuild the engines") from error
    version = data.get("format_version") if isinstance(data, dict) else None
    if not isinstance(version, int):
        raise ArtifactError(f"{path} has no format_version; rebuild the engines")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} was written by a newer sdtrt (manifest format {version}, this sdtrt "
            f"reads up to {FORMAT_VERSION}); upgrade sdtrt or rebuild the engines"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArtifactError(
            f"{path} is invalid ({where}: {first['msg']}); rebuild the engines"
        ) from error


def check_component_files(directory: Path, record: ComponentRecord) -> None:
    """Catch a missing or truncated file before a backend fails on it with a cryptic error."""
    root = directory.resolve()
    for relative, size in record.files.items():
        path = directory / relative
        if not path.resolve().is_relative_to(root):  # through a link
            raise ArtifactError(f"{path} leads outside {directory}; rebuild the engines")
        if not path.is_file():
            raise ArtifactError(f"{path} is missing; rebuild the engines with `sdtrt build`")
        actual = path.stat().st_size
        if actual != size:
            raise ArtifactError(
                f"{path} is damaged ({actual} bytes, built as {size}); "
                "rebuild the engines with `sdtrt build`"
            )
