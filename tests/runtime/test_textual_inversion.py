"""Textual-inversion embeddings loaded at run time: images match diffusers' pipelines after its
`load_textual_inversion` (diffusers' files and the A1111 web UI's; single and multi-vector;
SD 1.x and SDXL), token ids match its tokenizer's, and what does not fit is one line."""

import re
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, assert_same_image, psnr, sdtrt
from PIL import Image
from safetensors.numpy import save_file

from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import END_TO_END_PSNR_DB

WIDTH = 32  # the tiny model's text encoder; tiny SDXL's second one is 48 wide
PROMPT = "a photo of {} on a beach"


def _vectors(rows: int, width: int, seed: int) -> np.ndarray:
    """Embedding vectors a few times the table's scale, so that they show in the image."""
    return np.random.default_rng(seed).standard_normal((rows, width), dtype=np.float32) * 0.1


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("embeddings")
    made = {
        "diffusers": ({"<fox-style>": _vectors(1, WIDTH, 1)[0]}, "learned_embeds.safetensors"),
        "a1111": ({"emb_params": _vectors(3, WIDTH, 2)}, "inkstyle.safetensors"),
        "sdxl": (
            {"clip_l": _vectors(2, WIDTH, 3), "clip_g": _vectors(2, 48, 4)},
            "glowxl.safetensors",
        ),
    }
    for tensors, name in made.values():
        save_file(tensors, str(folder / name))
    return {kind: folder / name for kind, (_, name) in made.items()}


def _reference(cls, model: Path):
    pipe = cls.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, prompt: str, **extra) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(7)
    return pipe(
        prompt, num_inference_steps=5, generator=generator, output_type="np", **extra
    ).images


@pytest.mark.parametrize(("kind", "word"), [("diffusers", "<fox-style>"), ("a1111", "inkstyle")])
def test_sd_embeddings_make_diffusers_image(tiny_model_dir, tiny_engine_dir, files, kind, word):
    reference = _reference(diffusers.StableDiffusionPipeline, tiny_model_dir)
    # diffusers names an A1111 file's word only when told; the web UI (and sdtrt) by the file.
    reference.load_textual_inversion(str(files[kind]), token=word if kind == "a1111" else None)
    prompt = PROMPT.format(word)
    expected = _image(reference, prompt)
    with Pipeline.load(tiny_engine_dir) as pipe:
        plain = pipe(prompt, num_inference_steps=5, seed=7, output_type="np").images
        pipe.load_textual_inversion(files[kind])
        actual = pipe(prompt, num_inference_steps=5, seed=7, output_type="np").images
        conditioner = pipe.prompt_encoder.conditioners["text_encoder"]
        written = reference.maybe_convert_prompt(prompt, reference.tokenizer)
        ids = reference.tokenizer(written, padding="max_length", max_length=77).input_ids
        assert conditioner.tokenize([prompt], "diffusers")[0].ids[0].tolist() == ids
    assert_same_image(expected, actual)
    assert psnr(plain, actual) < END_TO_END_PSNR_DB - 10  # the word's vectors changed the image


def test_sdxl_embeddings_feed_both_text_encoders(preset_build, files):
    model, engines = preset_build("tiny-sdxl")
    reference = _reference(diffusers.StableDiffusionXLPipeline, model)
    from safetensors.torch import load_file

    tables = load_file(str(files["sdxl"]))
    reference.load_textual_inversion(tables["clip_l"], token="glowxl")
    reference.load_textual_inversion(
        tables["clip_g"],
        token="glowxl",
        text_encoder=reference.text_encoder_2,
        tokenizer=reference.tokenizer_2,
    )
    prompt = PROMPT.format("glowxl")
    expected = _image(reference, prompt)
    with Pipeline.load(engines) as pipe:
        pipe.load_textual_inversion(files["sdxl"])
        actual = pipe(prompt, num_inference_steps=5, seed=7, output_type="np").images
    assert_same_image(expected, actual)


def test_what_does_not_fit_is_refused(tiny_engine_dir, files, tmp_path):
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"not read")
    with Pipeline.load(tiny_engine_dir) as pipe:
        with pytest.raises(InputError, match="is a pickle, which can run code as it loads"):
            pipe.load_textual_inversion(pickle)
        with pytest.raises(InputError, match="not a torch.save zip file"):
            pipe.load_textual_inversion(pickle, allow_pickle=True)
        text = tmp_path / "notes.txt"
        text.write_text("not an embedding")
        with pytest.raises(InputError, match="is not .safetensors"):
            pipe.load_textual_inversion(text)
        with pytest.raises(InputError, match="holds vectors of width 32, 48; this model's text"):
            pipe.load_textual_inversion(files["sdxl"])
        taken = re.escape("'<|endoftext|>' is already in this model's vocabulary")
        with pytest.raises(InputError, match=taken):
            pipe.load_textual_inversion(files["diffusers"], token="<|endoftext|>")
        pipe.load_textual_inversion(files["diffusers"])
        with pytest.raises(InputError, match="'<fox-style>' is already in this model's vocab"):
            pipe.load_textual_inversion(files["diffusers"])


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this ran",))


def test_pickled_embeddings_are_read_without_torch_when_allowed(tiny_engine_dir, files, tmp_path):
    """The A1111 web UI's .pt files (a tensor, or an old ParameterDict, under string_to_param)
    and diffusers' .bin: the same vectors as their .safetensors make the same image."""
    from safetensors.numpy import load_file

    vectors = torch.from_numpy(load_file(str(files["a1111"]))["emb_params"])
    written = {
        "inkstyle.pt": {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.clone()}},
        "module.pt": {
            "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors)}),
            "name": "inkstyle",
            "step": 500,
        },
        "learned_embeds.bin": {"inkstyle": vectors},
    }
    for name, data in written.items():
        torch.save(data, tmp_path / name)
    torch.save({"emb_params": _RunsCode()}, tmp_path / "runs-code.pt")
    prompt = PROMPT.format("inkstyle")
    with Pipeline.load(tiny_engine_dir) as pipe:
        pipe.load_textual_inversion(files["a1111"])
        expected = pipe(prompt, num_inference_steps=3, seed=5, output_type="np").images
        expected_png = pipe(prompt, num_inference_steps=3, seed=5).images[0]
    for name in written:
        with Pipeline.load(tiny_engine_dir) as pipe:
            pipe.load_textual_inversion(tmp_path / name, token="inkstyle", allow_pickle=True)
            actual = pipe(prompt, num_inference_steps=3, seed=5, output_type="np").images
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    with Pipeline.load(tiny_engine_dir) as pipe:
        with pytest.raises(InputError, match="asks to run .*print, which is not allowed"):
            pipe.load_textual_inversion(tmp_path / "runs-code.pt", allow_pickle=True)
    # The web UI's word is the file's name, as for its .safetensors.
    refused = sdtrt("run", tiny_engine_dir, prompt, "--embedding", tmp_path / "inkstyle.pt")
    assert_one_line_error(refused, "or pass --allow-pickle if you trust its source")
    output = tmp_path / "ink.png"
    allowed = sdtrt("run", tiny_engine_dir, prompt, "--steps", 3, "--seed", 5, "-o", output,
                    "--embedding", tmp_path / "inkstyle.pt", "--allow-pickle")  # fmt: skip
    assert allowed.exit_code == 0, allowed.stderr
    assert np.array_equal(np.asarray(Image.open(output)), np.asarray(expected_png))


def test_a_pickled_tensor_reaching_past_its_storage_is_refused(tiny_engine_dir, tmp_path):
    """A view past the end of its storage would read the process's memory: the tensor's size
    and strides are checked against its storage before it is read."""
    import zipfile

    path = tmp_path / "inkstyle.pt"
    torch.save({"emb_params": torch.zeros(2, 32)}, path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    pickled = next(name for name in files if name.endswith("data.pkl"))
    size = b"K\x02K\x20\x86"  # the pickled size (2, 32): two small ints, then a pair
    assert files[pickled].count(size) == 1
    files[pickled] = files[pickled].replace(size, b"M\x00\x10K\x20\x86")  # (4096, 32)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with Pipeline.load(tiny_engine_dir) as pipe:
        with pytest.raises(InputError, match="a tensor that reaches past its storage"):
            pipe.load_textual_inversion(path, allow_pickle=True)


def test_run_takes_embeddings(tiny_engine_dir, files, tmp_path):
    output = tmp_path / "ink.png"
    result = sdtrt("run", tiny_engine_dir, PROMPT.format("inkstyle"), "--steps", 2,
                   "--embedding", files["a1111"], "-o", output)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert Image.open(output).size == (64, 64)
    missing = sdtrt("run", tiny_engine_dir, "a fox", "--embedding", tmp_path / "none.safetensors")
    assert_one_line_error(missing, "none.safetensors does not exist")


def test_an_embeddings_folder_loads_what_fits(tiny_engine_dir, files, tmp_path):
    """As the web UI's embeddings folder: each file by its word; another family's skipped."""
    folder = tmp_path / "embeddings"
    folder.mkdir()
    for kind in ("a1111", "sdxl"):
        (folder / files[kind].name).write_bytes(files[kind].read_bytes())
    output = tmp_path / "ink.png"
    prompt = PROMPT.format("inkstyle")
    result = sdtrt("run", tiny_engine_dir, prompt, "--steps", 3, "--seed", 5,
                   "--embeddings-dir", folder, "-o", output)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    with Pipeline.load(tiny_engine_dir) as pipe:
        pipe.load_textual_inversion(files["a1111"])
        expected = pipe(prompt, num_inference_steps=3, seed=5).images[0]
    assert np.array_equal(np.asarray(Image.open(output)), np.asarray(expected))
    assert "glowxl.safetensors skipped" in result.stderr


def test_the_server_reads_its_embeddings_folder(tiny_engine_dir, files, tmp_path):
    from serving import decode_png, live_server

    from sdtrt.serve.server import embedding_loader

    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / files["a1111"].name).write_bytes(files["a1111"].read_bytes())
    prompt = PROMPT.format("inkstyle")
    with live_server(tiny_engine_dir, loader=embedding_loader(folder)) as server:
        with server.client() as client:
            answer = client.post("/v1/txt2img", json={"prompt": prompt, "steps": 3, "seed": 5})
    assert answer.status_code == 200, answer.text
    with Pipeline.load(tiny_engine_dir) as pipe:
        pipe.load_textual_inversion(files["a1111"])
        expected = pipe(prompt, num_inference_steps=3, seed=5).images[0]
    image = decode_png(answer.json()["images"][0]).convert("RGB")
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_words_are_written_out_longest_first():
    from sdtrt.runtime.textual_inversion import expand_prompt

    words = {"style": "style style_1", "style2": "style2 style2_1"}
    assert expand_prompt("style2 and style", words) == "style2 style2_1 and style style_1"


def test_an_empty_embedding_is_refused(tmp_path):
    from sdtrt.runtime.textual_inversion import read_embedding

    save_file({"emb_params": np.zeros((0, WIDTH), np.float32)}, str(tmp_path / "none.safetensors"))
    with pytest.raises(InputError, match="its tables hold no vectors"):
        read_embedding(tmp_path / "none.safetensors")
