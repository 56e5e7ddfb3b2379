"""`sdtrt build`: model source -> ONNX per network -> engines -> a complete engine directory."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from sdtrt import __version__
from sdtrt.engine.artifact import ArtifactWriter, write_json
from sdtrt.engine.backends import resolve_build
from sdtrt.engine.layout import SCHEDULER_FILE, TOKENIZER_FILE_NAME
from sdtrt.engine.manifest import FORMAT_VERSION, Manifest, SourceInfo
from sdtrt.engine.options import BuildOptions, ExportOptions, Precision
from sdtrt.engine.ranges import BuildRanges, resolve_ranges
from sdtrt.engine.tensors import TensorSpec
from sdtrt.engine.weights.lora import lora_components
from sdtrt.errors import InputError
from sdtrt.export.calibration import CalibrationSet, calibration_set, check_calibratable
from sdtrt.export.component_build import ComponentBuild, Progress, build_key
from sdtrt.export.controlnet import (
    ControlNetSource,
    check_fits,
    controlnet_info,
    controlnet_spec,
    open_controlnets,
)
from sdtrt.export.families import KNOWN_COMPONENTS, Family, load_family
from sdtrt.export.lora_merge import loras_digest, merge_loras
from sdtrt.export.memory import build_memory_needed, release_modules
from sdtrt.export.precision import stores_fp16_weights
from sdtrt.export.sources import digest_files, open_source
from sdtrt.export.specs import UNetSpec
from sdtrt.export.tiny_vae import (
    check_fits as check_tiny_vae_fits,
)
from sdtrt.export.tiny_vae import (
    load_tiny_vae,
    open_tiny_vae,
    tiny_vae_info,
    tiny_vae_specs,
)
from sdtrt.export.tokenizer_export import export_t5_tokenizer, export_tokenizer

log = logging.getLogger(__name__)


def _no_progress(component: str, stage: str) -> None:
    pass


def build(
    model: str,
    output: Path,
    export_options: ExportOptions | None = None,
    build_options: BuildOptions | None = None,
    progress: Progress = _no_progress,
) -> Manifest:
    """Build (or bring up to date) the engine directory `output` for `model`."""
    export_options = export_options or ExportOptions()
    build_options = build_options or BuildOptions()
    unknown = sorted(set(export_options.components or ()) - set(KNOWN_COMPONENTS))
    if unknown:
        raise InputError(
            f"unknown component {', '.join(unknown)}; choose from {', '.join(KNOWN_COMPONENTS)}"
        )
    # The manifest records the backend and precision `auto` chose, not "auto", and why.
    resolved = resolve_build(build_options)
    backend, build_options = resolved.backend, resolved.options
    backend_version = backend.version()  # fails fast where the backend cannot run
    with (
        open_source(model, export_options.allow_pickle) as source,
        _tiny_vae_folder(export_options.tiny_vae) as tiny_folder,
        open_controlnets(export_options.controlnets, source.path) as controlnets,
    ):
        # A build that stores fp16 weights need not hold SD 3's T5-XXL in fp32 (17.7 GiB).
        sixteen_bit = stores_fp16_weights(build_options.precision)
        loaded = load_family(source.path, source.name, export_options.components, sixteen_bit)
        components = _in_build_order(
            export_options.components or loaded.default_components, loaded.default_components
        )
        export_options = export_options.model_copy(update={"components": components})
        info = loaded.info()
        tiny_vae = None
        if tiny_folder is not None:
            tiny_vae = load_tiny_vae(tiny_folder)
            check_tiny_vae_fits(tiny_vae, info.latent_channels, info.vae_scale_factor)
            info = info.model_copy(update={"tiny_vae": tiny_vae_info(tiny_vae, tiny_folder)})
        # The UNet's inputs, which ControlNets take too; read before the UNet may be let go.
        unet_inputs = _check_controlnets(loaded, components, build_options, controlnets)
        if controlnets:
            padding = getattr(loaded.denoiser_module.config, "downsample_padding", 1)
            info = info.model_copy(
                update={
                    "controlnets": tuple(controlnet_info(c) for c in controlnets),
                    "downsample_padding": int(padding),
                }
            )
        ranges = resolve_ranges(
            build_options, info.native_size, loaded.size_step, backend.fixed_shapes
        )
        digests = _digests(loaded, source.path)
        if export_options.loras and not loaded.merges_loras:
            raise InputError(
                "LoRAs are merged into SD 1.x, 2.x and SDXL models; SD 3 LoRAs are not "
                "supported yet"
            )
        if export_options.loras:
            merge_loras(loaded, export_options.loras)
            lora_digest = loras_digest(export_options.loras)
            digests.update(
                {
                    c: build_key({"files": digests[c], "loras": lora_digest})
                    for c in lora_components(digests)
                }
            )
        # w8a8 calibrates the denoiser on runs of the whole model: its text encoders and VAE
        # stay loaded until then, and its build depends on every part of the model.
        denoiser = loaded.denoiser
        calibrated = build_options.precision is Precision.W8A8 and denoiser in components
        if calibrated:
            check_calibratable(loaded.makes_images_from_text, denoiser)
        calibration_users = (*loaded.text_encoders, denoiser, "vae_decoder") if calibrated else ()
        # Only what the asked networks are exported from stays loaded from here on.
        release_modules(loaded, (*components, *calibration_users))
        quantized = denoiser if calibrated else None
        memory = build_memory_needed(loaded, components, build_options.guarded, quantized)
        with ArtifactWriter(output) as writer:
            # The cheap parts first, so that a bad tokenizer fails the build in seconds.
            tokenizers = {
                encoder: f"{loaded.TOKENIZER_FOLDERS[encoder]}/{TOKENIZER_FILE_NAME}"
                for encoder in loaded.text_encoders
                if encoder in components or encoder not in loaded.OPTIONAL_TEXT_ENCODERS
            }
            for encoder, relative in tokenizers.items():
                folder = source.path / loaded.TOKENIZER_FOLDERS[encoder]
                if encoder in loaded.T5_ENCODERS:
                    export_t5_tokenizer(folder, writer.staging / relative)
                else:
                    export_tokenizer(folder, writer.staging / relative, info.text_max_length)
            (writer.staging / SCHEDULER_FILE).parent.mkdir(exist_ok=True)
            scheduler_config = loaded.scheduler_config()
            write_json(writer.staging / SCHEDULER_FILE, scheduler_config)
            calibrate = None
            if calibrated:
                remaining = components[components.index(denoiser) :]
                calibrate = functools.partial(
                    _calibrate, loaded, ranges, scheduler_config, remaining
                )
            job = ComponentBuild(
                writer=writer,
                backend=backend,
                backend_version=backend_version,
                ranges=ranges,
                build_options=build_options,
                export_options=export_options,
                progress=progress,
                calibration_timesteps=_calibration_timesteps(scheduler_config),
                memory=memory,
                model_name=info.name,
                float_precision=(
                    backend.float_precision()
                    if build_options.precision is Precision.W8A8
                    else Precision.FP32
                ),
                calibrate=calibrate,
            )
            records = {}
            for index, name in enumerate(components):
                (spec,) = loaded.specs((name,))
                if controlnets and isinstance(spec, UNetSpec):
                    spec.take_residuals()
                sources = [digests[f] for f in loaded.COMPONENT_FOLDERS[name]]
                if calibrated and name == denoiser:
                    sources = [build_key(digests)]  # calibrated on runs of the whole model
                # The torch modules no network left needs go once this one is exported: the
                # denoiser's export has the text encoders' memory (SDXL's second one is 2.8 GB)
                # to itself, and its engine build the denoiser's own.
                left = components[index + 1 :]
                needed = (*left, *(calibration_users if denoiser in left else ()))
                release = functools.partial(release_modules, loaded, needed)
                records[name] = job.component(spec, sources, release)
                del spec
                release()
            if tiny_vae is not None and info.tiny_vae is not None:
                for spec in tiny_vae_specs(tiny_vae, info.vae_scale_factor, components):
                    records[spec.name] = job.component(spec, [info.tiny_vae.digest], _keep)
            for controlnet, built in zip(controlnets, info.controlnets, strict=True):
                spec = controlnet_spec(
                    controlnet, unet_inputs, info.vae_scale_factor, info.text_max_length
                )
                records[spec.name] = job.component(spec, [built.digest], spec.release)
                del spec
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                sdtrt_version=__version__,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                source=SourceInfo(
                    kind=source.kind, ref=source.ref, content_hash=build_key(digests)
                ),
                model=info,
                ranges=ranges,
                build_options=build_options,
                export_options=export_options,
                components=records,
                tokenizer=next(iter(tokenizers.values())),
                tokenizers=tokenizers,
                scheduler_config=SCHEDULER_FILE,
                picked=resolved.picked,
            )
            writer.commit(manifest)
    return manifest


def _check_controlnets(
    loaded: Family,
    components: tuple[str, ...],
    options: BuildOptions,
    controlnets: list[ControlNetSource],
) -> tuple[TensorSpec, ...]:
    """The UNet's inputs where ControlNets are built with it, once each is seen to fit; ()
    without ControlNets."""
    if not controlnets:
        return ()
    if not loaded.takes_controlnets:
        raise InputError(f"ControlNets are built for SD 1.x, 2.x and SDXL, not {loaded.family}")
    if loaded.denoiser not in components:
        raise InputError(
            "ControlNets are built with the UNet that takes their residuals: add unet to "
            "--components"
        )
    if options.precision is Precision.W8A8:
        raise InputError(
            "w8a8 builds calibrate the UNet on runs without ControlNets, so they are not built "
            "with ControlNets yet; choose --precision bf16, fp16 or fp32"
        )
    for controlnet in controlnets:
        latents = (int(loaded.vae.config.latent_channels), loaded.vae_scale_factor)
        check_fits(controlnet, loaded.denoiser_module.config, latents)
    (unet,) = loaded.specs((loaded.denoiser,))
    return unet.inputs


def _keep() -> None:
    """Nothing to let go: a tiny VAE's module is a few MB."""


@contextlib.contextmanager
def _tiny_vae_folder(ref: str | None) -> Iterator[Path | None]:
    if ref is None:
        yield None
    else:
        with open_tiny_vae(ref) as folder:
            yield folder


def _in_build_order(asked: tuple[str, ...], order: tuple[str, ...]) -> tuple[str, ...]:
    """The networks asked for, in the family's order (the cheap ones first; SD 3's T5 last where
    it is loaded once the others are let go); any it does not name after them."""
    return tuple(sorted(asked, key=lambda c: order.index(c) if c in order else len(order)))


def _digests(loaded: Family, folder: Path) -> dict[str, str]:
    """A digest per sub-folder the model's networks and tokenizers are read from, and of its
    index and scheduler config."""
    parts = [loaded.COMPONENT_FOLDERS[c] for c in loaded.default_components]
    folders = (
        "model_index.json",
        "scheduler",
        *dict.fromkeys(f for part in parts for f in part),
        *(loaded.TOKENIZER_FOLDERS[encoder] for encoder in loaded.text_encoders),
    )
    return {name: digest_files(folder, [name]) for name in folders}


def _calibrate(
    loaded: Family,
    ranges: BuildRanges,
    scheduler_config: dict[str, object],
    remaining: tuple[str, ...],
) -> CalibrationSet:
    """The UNet's inputs in diffusers' runs of the model (export/calibration.py); the text
    encoders go once the prompts are encoded, and the other modules only the runs needed once
    they are done, before the UNet's export and quantization."""
    pipeline = loaded.text_to_image_pipeline(scheduler_config)

    def release_text_encoders() -> None:
        for encoder in loaded.text_encoders:  # the pipeline holds them too
            setattr(pipeline, encoder, None)
        release_modules(loaded, (*remaining, "vae_decoder"))

    calibration = calibration_set(
        pipeline,
        loaded.denoiser_module,
        ranges,
        encode=functools.partial(loaded.prompt_arguments, pipeline),
        release=release_text_encoders,
    )
    pipeline = None  # it holds the modules released next
    release_modules(loaded, remaining)
    return calibration


def _calibration_timesteps(scheduler_config: dict[str, object]) -> tuple[float, ...]:
    """Early, middle and late noise levels of the model's training schedule."""
    steps = scheduler_config.get("num_train_timesteps", 1000)
    last = float(steps if isinstance(steps, int) else 1000) - 1
    return (last, round(last / 2), round(last / 50))
