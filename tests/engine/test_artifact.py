import json

import pytest

from sdtrt.engine.artifact import ArtifactWriter, write_json
from sdtrt.engine.manifest import read_manifest
from sdtrt.errors import BuildError


def _snapshot(directory):
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
    }


def test_refuses_a_foreign_directory_and_touches_nothing(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    (foreign / "manifest.json").write_text('{"name": "some web app"}')
    before = _snapshot(foreign)
    with pytest.raises(BuildError, match="exists and is not an sdtrt engine directory"):
        with ArtifactWriter(foreign):
            pass
    assert _snapshot(foreign) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_refuses_a_file(tmp_path):
    path = tmp_path / "out"
    path.write_text("x")
    with pytest.raises(BuildError):
        with ArtifactWriter(path):
            pass


def test_second_writer_on_the_same_output_is_refused(tmp_path):
    with ArtifactWriter(tmp_path / "out"):
        with pytest.raises(BuildError, match="another sdtrt build is writing"):
            with ArtifactWriter(tmp_path / "out"):
                pass


def test_commit_replaces_an_engine_directory_and_reuses_its_components(engine_copy, tmp_path):
    manifest = read_manifest(engine_copy)
    unet = manifest.components["unet"]
    unet_file = engine_copy / unet.engine
    inode = unet_file.stat().st_ino
    with ArtifactWriter(engine_copy) as writer:
        assert writer.reuse("unet", "another key") is None
        record = writer.reuse("unet", unet.build_key)
        assert record == unet
        # Reuse links rather than copies the (possibly multi-GB) files.
        assert (writer.staging / unet.engine).stat().st_ino == inode
        for name in ("tokenizer", "scheduler"):
            (writer.staging / name).mkdir()
        (writer.staging / manifest.tokenizer).write_bytes(
            (engine_copy / manifest.tokenizer).read_bytes()
        )
        write_json(writer.staging / manifest.scheduler_config, {"_class_name": "PNDMScheduler"})
        (writer.staging / "leftover").mkdir()
        writer.commit(manifest.model_copy(update={"components": {"unet": record}}))
    rebuilt = read_manifest(engine_copy)
    assert list(rebuilt.components) == ["unet"]
    assert sorted(p.name for p in engine_copy.iterdir()) == [
        "manifest.json",
        "scheduler",
        "tokenizer",
        "unet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]  # no staging left behind
    assert json.loads((engine_copy / "scheduler/scheduler_config.json").read_text())


def test_a_failed_build_leaves_no_engine_directory_and_no_litter(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(output) as writer:
            (writer.component_dir("unet") / "model.onnx").write_bytes(b"partial")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_build_keeps_finished_components_for_the_next(engine_copy, tmp_path):
    record = read_manifest(engine_copy).components["text_encoder"]
    output = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(output) as writer:
            folder = writer.component_dir("text_encoder")
            for relative in record.files:
                (writer.staging / relative).write_bytes((engine_copy / relative).read_bytes())
            writer.finish_component(record)
            raise RuntimeError("unet export failed")
    assert not output.exists()
    with ArtifactWriter(output) as writer:
        assert writer.reuse("text_encoder", record.build_key) == record
        assert folder == writer.staging / "text_encoder"
