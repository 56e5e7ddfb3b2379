import pytest

from sdtrt.errors import InputError, ModelSourceError
from sdtrt.export.presets import write_preset
from sdtrt.export.sources import _download, describe_model_ref, digest_files


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
        _download("someone/some-model")
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
