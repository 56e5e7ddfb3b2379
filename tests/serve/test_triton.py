"""The Triton model repository export: config checked with Triton's own protobuf definitions.

No Triton server runs here. The exported model.py is run against a minimal stand-in for
`triton_python_backend_utils` (the few calls it makes, as Triton documents them), which checks
what our code does with requests, not Triton itself.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from sdtrt.engine.manifest import read_manifest
from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve.triton import export_triton

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _parse(path: Path):  # type: ignore[no-untyped-def]
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_config_parses_with_tritons_definitions(tiny_engine_dir: Path, tmp_path: Path) -> None:
    model = export_triton(tiny_engine_dir, tmp_path / "repo", instances=2, max_steps=80)
    config = _parse(model / "config.pbtxt")
    assert config.name == "sdtrt_txt2img" and config.backend == "python"
    types_by_name = {i.name: model_config_pb2.DataType.Name(i.data_type) for i in config.input}
    assert types_by_name["STEPS"] == "TYPE_INT32" and types_by_name["GUIDANCE"] == "TYPE_FP32"
    assert types_by_name["SEED"] == "TYPE_INT64" and types_by_name["HEIGHT"] == "TYPE_INT32"
    assert {i.name for i in config.input if i.optional} == set(types_by_name) - {"PROMPT"}
    assert [o.name for o in config.output] == ["IMAGES", "SEED_USED"]
    [group] = config.instance_group
    assert group.count == 2 and model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == (
        "KIND_CPU"
    )
    assert config.parameters["max_steps"].string_value == "80"
    read_manifest(model / "1" / "engines")  # a complete engine directory travels with it
    with pytest.raises(InputError, match="already exists"):
        export_triton(tiny_engine_dir, tmp_path / "repo")


def _stand_in_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self._name, self._array = name, array

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._array

    class TritonError:
        def __init__(self, message: str) -> None:
            self._message = message

        def message(self) -> str:
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None):
            self.outputs = {tensor.name(): tensor.as_numpy() for tensor in output_tensors}
            self.error = error

    def get_input_tensor_by_name(request: dict[str, Tensor], name: str) -> Tensor | None:
        return request.get(name)

    module.Tensor = Tensor  # type: ignore[attr-defined]
    module.TritonError = TritonError  # type: ignore[attr-defined]
    module.InferenceResponse = InferenceResponse  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = get_input_tensor_by_name  # type: ignore[attr-defined]
    return module


def test_model_takes_steps_guidance_seed_and_size_per_request(
    tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.protobuf import json_format

    model_dir = export_triton(tiny_engine_dir, tmp_path / "repo")
    pb_utils = _stand_in_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("exported_model", model_dir / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    exported = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exported)
    config = _parse(model_dir / "config.pbtxt")
    model = exported.TritonPythonModel()
    model.initialize({
        "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
        "model_repository": str(model_dir),
        "model_version": "1",
    })  # fmt: skip

    dtypes = {"SEED": np.int64, "GUIDANCE": np.float32, "STEPS": np.int32, "HEIGHT": np.int32}
    dtypes.update(WIDTH=np.int32, BATCH=np.int32)

    def request(**inputs: object) -> dict[str, object]:
        """As Triton hands them over: strings as bytes in object arrays, numbers typed."""
        tensors = {}
        for name, value in inputs.items():
            if isinstance(value, str):
                array = np.array([value.encode()], dtype=np.object_)
            else:
                array = np.array([value], dtype=dtypes[name])
            tensors[name] = pb_utils.Tensor(name, array)  # type: ignore[attr-defined]
        return tensors

    good = request(PROMPT="a fox", STEPS=3, GUIDANCE=5.0, SEED=9, HEIGHT=48, WIDTH=64)
    bad = request(PROMPT="a fox", STEPS=0)
    off_grid = request(PROMPT="a fox", HEIGHT=33)
    too_long = request(PROMPT="y" * 3000, STEPS=2)
    too_many = request(PROMPT="a fox", STEPS=2, BATCH=99)
    answers = model.execute([good, bad, off_grid, too_long, too_many])
    model.finalize()
    assert answers[0].error is None
    with Pipeline.load(tiny_engine_dir) as pipe:
        direct = pipe(
            "a fox", num_inference_steps=3, guidance_scale=5.0, seed=9, height=48, width=64
        )
    assert np.array_equal(answers[0].outputs["IMAGES"][0], np.asarray(direct.images[0]))
    assert answers[0].outputs["IMAGES"].shape == (1, 48, 64, 3)
    assert answers[0].outputs["SEED_USED"].tolist() == [9]
    assert "STEPS must be 1 to 150" in answers[1].error.message()
    assert "multiple of" in answers[2].error.message()
    assert "PROMPT is 3000 characters; the limit is 2000" in answers[3].error.message()
    assert "BATCH must be 1 to 16" in answers[4].error.message()


def test_cli_export_and_refusal(tiny_engine_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sdtrt.cli", "export-triton", str(tiny_engine_dir)]
    done = subprocess.run([*command, str(tmp_path / "repo")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "repo" / "sdtrt_txt2img" / "1" / "model.py").is_file()
    again = subprocess.run([*command, str(tmp_path / "repo")], capture_output=True, text=True)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "already exists" in again.stderr
