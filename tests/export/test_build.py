"""What `build` writes, and what it reuses when built again."""

import json
import shutil

import onnx
import pytest

from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.options import BuildOptions
from sdtrt.errors import InputError, ModelSourceError
from sdtrt.export.build import ExportOptions, build

# The shared tiny engines are ONNX Runtime's; rebuilding them names that backend.
ORT = "onnxruntime"
ALL = ExportOptions(components=("text_encoder", "unet", "vae_decoder", "vae_encoder"))


def _stages(model, output, export_options, build_options):
    seen = {}
    build(
        model, output, export_options, build_options, lambda c, s: seen.setdefault(c, []).append(s)
    )
    return seen


def test_manifest_describes_the_build(tiny_engine_dir, tiny_model_dir):
    manifest = read_manifest(tiny_engine_dir)
    assert manifest.source.kind == "folder" and manifest.source.ref == str(tiny_model_dir)
    assert len(manifest.source.content_hash) == 64
    model = manifest.model
    assert model.native_size == (64, 64) and model.vae_scale_factor == 2
    assert model.vae_scaling_factor == pytest.approx(0.18215) and model.text_max_length == 77
    assert manifest.ranges.size.min == (32, 32) and manifest.ranges.size.max == (128, 128)
    unet = manifest.components["unet"]
    assert unet.backend == "onnxruntime" and unet.precision.value == "fp32"
    assert unet.io.profile["sample"].max == (8, 4, 64, 64)  # 4 images, doubled for guidance
    assert manifest.components["vae_decoder"].io.profile["latent"].max == (4, 4, 64, 64)
    tokenizer = json.loads((tiny_engine_dir / manifest.tokenizer).read_text())
    assert tokenizer["padding"]["strategy"] == {"Fixed": 77}
    scheduler = json.loads((tiny_engine_dir / manifest.scheduler_config).read_text())
    assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["steps_offset"] == 1


def test_constant_folding_is_recorded_and_matches_the_saved_graph(tiny_engine_dir):
    """Polygraphy's passes shrink every exported graph; what is left is what was saved."""
    for record in read_manifest(tiny_engine_dir).components.values():
        cleanup = record.cleanup
        assert cleanup is not None and cleanup.kept_nodes < cleanup.exported_nodes, record.name
        assert sum(cleanup.removed.values()) >= cleanup.exported_nodes - cleanup.kept_nodes
        saved = onnx.load(str(tiny_engine_dir / record.onnx), load_external_data=False)
        assert sum(n.op_type != "Constant" for n in saved.graph.node) == cleanup.kept_nodes
    unet = read_manifest(tiny_engine_dir).components["unet"].cleanup
    assert unet is not None and unet.removed.get("Shape", 0) > 0  # shape arithmetic folded


def test_same_build_again_reuses_everything(engine_copy, tiny_model_dir):
    before = read_manifest(engine_copy)
    stages = _stages(str(tiny_model_dir), engine_copy, ALL, BuildOptions(backend=ORT))
    assert stages == {name: ["reused"] for name in ALL.components}
    after = read_manifest(engine_copy)
    assert after.components == before.components


def test_changed_ranges_rebuild_what_they_touch(engine_copy, tiny_model_dir):
    options = ExportOptions(components=("text_encoder", "vae_decoder"))
    build_options = BuildOptions(backend=ORT, max_batch=2)
    stages = _stages(str(tiny_model_dir), engine_copy, options, build_options)
    assert stages == {
        name: ["export", "optimize", "validate", "done"] for name in options.components
    }
    manifest = read_manifest(engine_copy)
    assert set(manifest.components) == set(options.components)
    assert not (engine_copy / "unet").exists()  # components no longer asked for are dropped
    assert manifest.components["text_encoder"].io.profile["input_ids"].max == (4, 77)


def test_unknown_component_is_refused_before_work(tmp_path):
    with pytest.raises(InputError, match="unknown component vae; choose from"):
        build("tiny", tmp_path / "out", ExportOptions(components=("vae",)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: (t / "vocab.json").write_text("{broken"), "the tokenizer in"),
        (lambda t: shutil.rmtree(t), "the tokenizer in"),
    ],
)
def test_bad_tokenizer_fails_the_build_with_one_line(tiny_model_dir, tmp_path, damage, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model / "tokenizer")
    with pytest.raises(ModelSourceError) as error:
        build(str(model), tmp_path / "out")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("FluxPipeline", "is a FluxPipeline; sdtrt builds"),
        # An SD folder labelled SD 3: what SD 3 needs is named.
        ("StableDiffusion3Pipeline", "lacks text_encoder_2, transformer, tokenizer_2 in"),
        # An SD folder labelled SDXL: what SDXL needs is named.
        ("StableDiffusionXLPipeline", "lacks text_encoder_2, tokenizer_2 in model_index.json"),
    ],
)
def test_not_a_supported_pipeline(tiny_model_dir, tmp_path, pipeline, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = pipeline
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelSourceError, match=message):
        build(str(model), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_build_for_another_target_is_not_reused(engine_copy, tiny_model_dir, monkeypatch):
    """An engine laid out for another CPU (or GPU, or library release) is rebuilt, not relinked."""
    from sdtrt.engine.onnxruntime import cpu as onnxruntime_backend

    here = onnxruntime_backend.nchwc_block(onnxruntime_backend.cpu_flags())
    other = {"avx2", "fma"} if here == 16 else {"avx512f", "avx2", "fma"}
    monkeypatch.setattr(onnxruntime_backend, "cpu_flags", lambda: other)
    options = ExportOptions(components=("text_encoder",))
    stages = _stages(str(tiny_model_dir), engine_copy, options, BuildOptions(backend=ORT))
    assert stages == {"text_encoder": ["export", "optimize", "validate", "done"]}
    settings = read_manifest(engine_copy).components["text_encoder"].settings
    assert settings["nchwc_block"] == onnxruntime_backend.nchwc_block(other) != here


def test_weights_stay_weights_through_constant_folding(tiny_model_dir, tmp_path, monkeypatch):
    """Weights leave the graph while constants are folded and come back under their names:
    folded with the rest, CLIP's position table became a new constant that LoRA switching could
    not find. The outputs are those of a graph folded weights and all."""
    import numpy as np
    import onnxruntime as ort

    from sdtrt.engine.ranges import resolve_ranges
    from sdtrt.engine.weights import initializers
    from sdtrt.export import onnx_export
    from sdtrt.export.families import load_family

    spec = load_family(tiny_model_dir, "tiny").specs(("text_encoder",))[0]
    inputs = spec.sample_inputs(
        spec.opt_point(resolve_ranges(BuildOptions(), (64, 64), 2)), np.random.default_rng(0)
    )
    onnx_export.export_onnx(spec, inputs, tmp_path / "aside.onnx")
    monkeypatch.setattr(initializers, "WEIGHT_BYTES", 2**40)  # nothing set aside
    onnx_export.export_onnx(spec, inputs, tmp_path / "whole.onnx")

    def weights(name):
        return {t.name for t in onnx.load(str(tmp_path / name)).graph.initializer}

    parameters = {f"inner.{name}" for name, _ in spec.text_encoder.named_parameters()}
    assert "inner.embeddings.position_embedding.weight" in weights("aside.onnx") & parameters
    assert "inner.embeddings.position_embedding.weight" not in weights("whole.onnx")
    graph = onnx.load(str(tmp_path / "aside.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "added_embeddings"]
    read = {name for node in graph.node for name in node.input}
    assert all(t.name in read for t in graph.initializer)
    cpu = ["CPUExecutionProvider"]
    for expected, got in zip(
        *(ort.InferenceSession(str(tmp_path / name), providers=cpu).run(None, inputs)
          for name in ("whole.onnx", "aside.onnx")), strict=True,
    ):  # fmt: skip
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_a_full_disk_is_one_line_and_the_build_resumes(tiny_model_dir, tmp_path, monkeypatch):
    """A write that fails halfway (no space left) ends the build with one line saying what to
    do; the networks already finished are reused by the next build."""
    import errno

    from typer.testing import CliRunner

    from sdtrt.cli import app
    from sdtrt.export import component_build

    real_export = component_build.export_graph

    def full_at_the_unet(spec, *args, **kwargs):
        if spec.name == "unet":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_export(spec, *args, **kwargs)

    monkeypatch.setattr(component_build, "export_graph", full_at_the_unet)
    output = tmp_path / "engines"
    arguments = ["build", str(tiny_model_dir), "--backend", "onnxruntime", "-o", str(output)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]  # after the progress of what was built
    assert line.startswith("error: building the unet failed writing its files")
    assert "No space left on device" in line and "free space" in line
    assert not output.exists()
    monkeypatch.setattr(component_build, "export_graph", real_export)
    manifest = build(str(tiny_model_dir), output, build_options=BuildOptions(backend="onnxruntime"))
    assert manifest.components["text_encoder"].build_seconds > 0
