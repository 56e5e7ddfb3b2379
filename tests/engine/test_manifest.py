import json
import shutil

import pytest

from sdtrt.engine.manifest import FORMAT_VERSION, check_component_files, read_manifest
from sdtrt.errors import ArtifactError


def test_reads_a_built_manifest(tiny_engine_dir):
    manifest = read_manifest(tiny_engine_dir)
    assert manifest.format_version == FORMAT_VERSION
    assert set(manifest.components) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    for record in manifest.components.values():
        check_component_files(tiny_engine_dir, record)


def _rewrite(directory, change):
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), "does not exist; create it with `sdtrt build"),
        (
            lambda d: (d / "manifest.json").unlink(),
            "is not an sdtrt engine directory (no manifest.json)",
        ),
        (lambda d: (d / "manifest.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / "manifest.json").write_text("[1, 2]"), "has no format_version"),
        (
            lambda d: _rewrite(d, lambda m: m.update(format_version=FORMAT_VERSION + 1)),
            f"newer sdtrt (manifest format {FORMAT_VERSION + 1}",
        ),
        (
            lambda d: _rewrite(d, lambda m: m.pop("components")),
            "is invalid (components: Field required)",
        ),
        (
            lambda d: _rewrite(d, lambda m: m["ranges"].update(max_batch="many")),
            "is invalid (ranges.max_batch",
        ),
    ],
)
def test_bad_directories_give_one_line(engine_copy, damage, message):
    damage(engine_copy)
    with pytest.raises(ArtifactError) as error:
        read_manifest(engine_copy)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_file_is_not_an_engine_directory(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        read_manifest(path)


def test_missing_and_truncated_component_files(engine_copy):
    manifest = read_manifest(engine_copy)
    record = manifest.components["unet"]
    engine = engine_copy / record.engine
    engine.write_bytes(engine.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"is damaged \(1000 bytes, built as \d+\)"):
        check_component_files(engine_copy, record)
    engine.unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        check_component_files(engine_copy, record)


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../../outside.onnx", "unet/../../x", "C:\\models\\x", "..\\x"]
)
def test_a_manifest_cannot_point_outside_its_directory(engine_copy, path):
    """Engines handed over by someone else must not make the runtime read other files."""

    def point(m):
        m["components"]["unet"]["engine"] = path

    _rewrite(engine_copy, point)
    with pytest.raises(ArtifactError, match="is not a path inside the engine directory"):
        read_manifest(engine_copy)


def test_a_link_out_of_the_directory_is_refused(engine_copy, tmp_path):
    record = read_manifest(engine_copy).components["unet"]
    engine = engine_copy / record.engine
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(engine.read_bytes())
    engine.unlink()
    engine.symlink_to(outside)
    with pytest.raises(ArtifactError, match="leads outside"):
        check_component_files(engine_copy, record)
