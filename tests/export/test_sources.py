import pytest

from sdtrt.errors import InputError, ModelSourceError
from sdtrt.export.presets import write_preset
from sdtrt.export.sources import describe_model_ref, digest_files, download


def test_what_a_model_reference_names(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert describe_model_ref(str(tiny_model_dir)) == "folder"
    assert describe_model_ref("tiny") == "preset"
    assert describe_model_ref("sd15") == "preset"
    assert describe_model_ref("runwayml/stable-diffusion-v1-5") == "hub"
    (tmp_path / "tiny").mkdir()
    with pytest.raises(ModelSourceError, match="tiny is not a diffusers model folder"):
        describe_model_ref("tiny")  # an existing folder wins over the preset name


@pytest.mark.parametrize("ref", ["no-such-thing", "a/b/c", "../nowhere/model"])
def test_unknown_models(ref):
    with pytest.raises(ModelSourceError, match="unknown model"):
        describe_model_ref(ref)


def test_offline_hub_id_says_to_pass_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceError) as error:
        download("someone/some-model")
    assert "cannot fetch 'someone/some-model'" in str(error.value)
    assert "pass a local diffusers folder" in str(error.value)


def test_digest_follows_content(tiny_model_dir, tmp_path):
    first = digest_files(tiny_model_dir, ["unet"])
    assert first == digest_files(tiny_model_dir, ["unet"])
    assert first != digest_files(tiny_model_dir, ["vae"])


def test_preset_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists and is not empty"):
        write_preset("tiny", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_unknown_preset():
    with pytest.raises(InputError) as caught:
        write_preset("huge", __import__("pathlib").Path("/nonexistent/x"))
    message = str(caught.value)
    assert message.startswith("unknown preset 'huge'; choose one of: tiny, tiny-inpaint, ")
    assert all(name in message for name in ("tiny-sdxl-refiner", "sd15", "sdxl"))


def test_a_folder_with_pickled_weights_needs_allow_pickle(tiny_model_dir, tmp_path):
    """A .bin network can run any code as it loads: refused in one line, nothing written."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from sdtrt.cli import app
    from sdtrt.export.sources import check_no_pickles

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), folder / "unet" / "diffusion_pytorch_model.bin")
    check_no_pickles(folder, allow_pickle=False)  # beside .safetensors, a .bin is not read
    weights.unlink()
    result = CliRunner().invoke(app, ["build", str(folder), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-pickle" in lines[0] and "unet" in lines[0]
    assert not (tmp_path / "out").exists()
    check_no_pickles(folder, allow_pickle=True)
