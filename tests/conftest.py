"""Shared fixtures: the tiny preset as a diffusers folder and its engines, made once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def pytest_sessionstart(session: pytest.Session) -> None:
    """With EXPECT_ONNXRUNTIME_VERSION set (`make test-onnxruntime-versions`), refuse to run on
    any other onnxruntime: a path mistake would otherwise test the wrong release silently."""
    expected = os.environ.get("EXPECT_ONNXRUNTIME_VERSION")
    if expected:
        import onnxruntime

        if onnxruntime.__version__ != expected:
            raise pytest.UsageError(
                f"expected onnxruntime {expected}, imported {onnxruntime.__version__} "
                f"from {onnxruntime.__file__}"
            )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset written as an ordinary diffusers folder."""
    from sdtrt.export.presets import write_preset

    folder = tmp_path_factory.mktemp("models") / "tiny"
    write_preset("tiny", folder)
    return folder


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX Runtime engines for the tiny model, every component including the VAE encoder.
    Treat as read-only. (OpenVINO's are `tiny_openvino_dir`, in tests/engine.)"""
    from sdtrt.engine.options import BuildOptions
    from sdtrt.export.build import ExportOptions, build

    output = tmp_path_factory.mktemp("engines") / "tiny"
    components = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    build(
        str(tiny_model_dir),
        output,
        ExportOptions(components=components),
        BuildOptions(backend="onnxruntime"),  # named: `auto` may pick OpenVINO
    )
    return output


@pytest.fixture
def engine_copy(tiny_engine_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny engines, for tests that damage or rebuild them."""
    target = tmp_path / "engines"
    shutil.copytree(tiny_engine_dir, target)
    return target


@pytest.fixture(scope="session")
def lora_files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random LoRAs for the tiny model (see lora_files.py): diffusers layout with alpha in
    its header, and kohya layout in fp16."""
    from lora_files import write_diffusers_lora, write_kohya_lora

    folder = tmp_path_factory.mktemp("loras")
    return {
        "diffusers": write_diffusers_lora(tiny_model_dir, folder / "a.safetensors", 1, alpha=8.0),
        "kohya": write_kohya_lora(tiny_model_dir, folder / "b.safetensors", 2),
    }


@pytest.fixture(scope="session")
def diffusers_pipeline(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model in diffusers' own StableDiffusionPipeline: the reference."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_inpaint_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny-inpaint preset (9-channel UNet) as a diffusers folder."""
    from sdtrt.export.presets import write_preset

    folder = tmp_path_factory.mktemp("models") / "tiny-inpaint"
    write_preset("tiny-inpaint", folder)
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint_engine_dir(
    tiny_inpaint_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """ONNX Runtime engines for the tiny inpainting model, default components. Read-only."""
    from sdtrt.engine.options import BuildOptions
    from sdtrt.export.build import ExportOptions, build

    output = tmp_path_factory.mktemp("engines") / "tiny-inpaint"
    build(str(tiny_inpaint_model_dir), output, ExportOptions(), BuildOptions(backend="onnxruntime"))
    return output


CONTROLNET_PRESETS = ("tiny-controlnet", "tiny-controlnet-2")


@pytest.fixture(scope="session")
def tiny_controlnet_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two tiny ControlNet presets as diffusers folders, by name."""
    from sdtrt.export.presets import write_preset

    folder = tmp_path_factory.mktemp("controlnets")
    for name in CONTROLNET_PRESETS:
        write_preset(name, folder / name)
    return {name: folder / name for name in CONTROLNET_PRESETS}


@pytest.fixture(scope="session")
def tiny_controlnet_engine_dir(
    tiny_model_dir: Path,
    tiny_controlnet_dirs: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """ONNX Runtime fp32 engines for the tiny model with both tiny ControlNets (named after
    their presets), default components: the first built from its folder, the second from a
    single .safetensors file of its weights. Read-only."""
    from sdtrt.engine.options import BuildOptions, Precision
    from sdtrt.export.build import ExportOptions, build

    first, second = (tiny_controlnet_dirs[name] for name in CONTROLNET_PRESETS)
    file = tmp_path_factory.mktemp("controlnet-file") / f"{second.name}.safetensors"
    shutil.copyfile(second / "diffusion_pytorch_model.safetensors", file)
    output = tmp_path_factory.mktemp("engines") / "tiny-with-controlnets"
    refs = (str(first), str(file))
    options = BuildOptions(backend="onnxruntime", precision=Precision.FP32)
    build(str(tiny_model_dir), output, ExportOptions(controlnets=refs), options)
    return output


@pytest.fixture(scope="session")
def preset_build(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """`get(name)` -> (diffusers folder, ONNX Runtime engine directory) of a preset, each
    written and built once per session, default components. Treat both as read-only."""
    from sdtrt.engine.options import BuildOptions
    from sdtrt.export.build import ExportOptions, build
    from sdtrt.export.presets import write_preset

    made: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in made:
            folder = tmp_path_factory.mktemp("models") / name
            write_preset(name, folder)
            output = tmp_path_factory.mktemp("engines") / name
            build(str(folder), output, ExportOptions(), BuildOptions(backend="onnxruntime"))
            made[name] = (folder, output)
        return made[name]

    return get
