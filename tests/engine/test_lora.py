"""LoRA files read in numpy: layouts, alphas, bfloat16, and one clear line for bad files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from safetensors.numpy import save_file

from sdtrt.engine.weights.initializers import read_initializers, with_initializers
from sdtrt.engine.weights.lora import LoraSource, lora_deltas, parse_lora_arg, read_lora
from sdtrt.engine.weights.safetensors import SafetensorsFile
from sdtrt.errors import ArtifactError, InputError

SHAPES = {
    "unet": {"mid_block.attentions.0.proj_in.weight": (8, 8, 1, 1),
             "down_blocks.0.resnets.0.conv1.weight": (8, 4, 3, 3)},
    "text_encoder": {"encoder.layers.0.self_attn.q_proj.weight": (6, 6)},
}  # fmt: skip
RNG = np.random.default_rng(0)


def _random(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape, dtype=np.float32)


@pytest.fixture
def kohya(tmp_path):
    tensors = {
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": _random(2, 4, 3, 3),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": _random(8, 2, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha": np.array(1.0, dtype=np.float32),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": _random(2, 6),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": _random(6, 2),
    }
    save_file(tensors, str(tmp_path / "k.safetensors"))
    return tmp_path / "k.safetensors", tensors


def test_kohya_deltas_are_scale_alpha_over_rank_up_times_down(kohya):
    path, t = kohya
    deltas = {(c, w): d for c, w, d in lora_deltas([LoraSource(path=path, scale=0.5)], SHAPES)}
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    up, down = t[f"{conv}.lora_up.weight"], t[f"{conv}.lora_down.weight"]
    # strength 0.5, alpha 1 over rank 2
    expected = (up.reshape(8, 2) @ down.reshape(2, -1)).reshape(8, 4, 3, 3) * 0.5 * 1 / 2
    actual = deltas["unet", "down_blocks.0.resnets.0.conv1.weight"]
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    # No alpha: alpha = rank, so only the strength scales.
    expected = t[f"{q}.lora_up.weight"] @ t[f"{q}.lora_down.weight"] * 0.5
    np.testing.assert_allclose(
        deltas["text_encoder", "encoder.layers.0.self_attn.q_proj.weight"], expected, rtol=1e-6
    )


def test_diffusers_layout_with_header_alpha_and_clip_text_model_prefix(tmp_path):
    down, up = _random(2, 6), _random(6, 2)
    module = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    path = tmp_path / "d.safetensors"
    metadata = {"lora_adapter_metadata": json.dumps({"text_encoder.lora_alpha": 8})}
    save_file({f"{module}.lora_A.weight": down, f"{module}.lora_B.weight": up}, str(path),
              metadata=metadata)  # fmt: skip
    [layer] = read_lora(LoraSource(path=path, scale=2.0), SHAPES)
    assert layer.weight == "encoder.layers.0.self_attn.q_proj.weight"
    assert layer.scale == 2.0 * 8 / 2


def test_bfloat16_reads_exactly(tmp_path):
    from safetensors.torch import save_file as save_torch

    value = torch.randn(3, 5).to(torch.bfloat16)
    save_torch({"x": value}, str(tmp_path / "b.safetensors"))
    read = SafetensorsFile(tmp_path / "b.safetensors").read("x")
    assert read.dtype == np.float32 and np.array_equal(read, value.float().numpy())


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"lora_unet_x.hada_w1_a": np.zeros(2)}, "LyCORIS/DoRA adapter"),
        ({"model.weight": np.zeros(2)}, "not a LoRA sdtrt reads"),
        ({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": np.zeros((2, 8))},
         "another architecture"),
        ({"unet.mid_block.attentions.0.proj_in.lora_A.weight": np.zeros((2, 8, 1, 1))},
         "lacks its up matrix"),
        ({"unet.mid_block.attentions.0.proj_in.lora_A.weight": np.zeros((2, 9, 1, 1)),
          "unet.mid_block.attentions.0.proj_in.lora_B.weight": np.zeros((8, 2, 1, 1))},
         "made for another model"),
    ],
)  # fmt: skip
def test_bad_lora_files_are_one_line(tmp_path, tensors, message):
    path = tmp_path / "bad.safetensors"
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(path))
    with pytest.raises(InputError, match=message):
        list(lora_deltas([LoraSource(path=path)], SHAPES))


def test_not_a_safetensors_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"garbage that is no header")
    with pytest.raises(InputError, match="not a .safetensors file"):
        read_lora(LoraSource(path=tmp_path / "x.safetensors"), SHAPES)


def test_parse_lora_arg(tmp_path):
    path = tmp_path / "my:lora.safetensors"
    path.write_bytes(b"")
    assert parse_lora_arg(str(path)) == LoraSource(path=path, scale=1.0)
    assert parse_lora_arg(f"{path}:0.6") == LoraSource(path=path, scale=0.6)
    with pytest.raises(InputError, match="does not exist"):
        parse_lora_arg(str(tmp_path / "missing.safetensors:0.5"))
    with pytest.raises(InputError, match="finite"):
        parse_lora_arg(f"{path}:nan")
    (tmp_path / "old.ckpt").write_bytes(b"")
    with pytest.raises(InputError, match="only those"):
        parse_lora_arg(str(tmp_path / "old.ckpt"))


def _graph(tmp_path, external: bool):
    weights = {"w": _random(16, 16), "v": _random(16, 16).astype(np.float16)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Cast", ["v"], ["v32"], to=onnx.TensorProto.FLOAT),
             helper.make_node("MatMul", ["y", "v32"], ["z"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=external, location="model.onnx.data",
              size_threshold=0)  # fmt: skip
    return path, weights


@pytest.mark.parametrize("external", [False, True])
def test_initializers_are_read_and_replaced_without_onnx(tmp_path, external):
    import onnxruntime as ort

    path, weights = _graph(tmp_path, external)
    read = read_initializers(path, ["w", "v"])
    assert all(np.array_equal(read[k], v) and read[k].dtype == v.dtype for k, v in weights.items())
    new = {"w": weights["w"] * 2, "v": weights["v"] * np.float16(3)}
    model, kept_apart = with_initializers(path, new)
    assert set(kept_apart) == ({"w", "v"} if external else set())
    options = ort.SessionOptions()
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in kept_apart.values()]
    if kept_apart:
        options.add_external_initializers(list(kept_apart), values)
    x = _random(1, 16)
    out = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_allclose(out, x @ new["w"] @ new["v"].astype(np.float32), rtol=1e-4)
    with pytest.raises(ArtifactError, match="lacks weights"):
        read_initializers(path, ["nope"])
