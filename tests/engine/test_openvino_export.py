"""A compiled OpenVINO model is streamed to its file as OpenVINO writes it, not held in memory
whole, and a write that fails (a full disk) fails the build instead of leaving a cut blob."""

from __future__ import annotations

import errno
import io

import pytest

from sdtrt.engine.openvino import engine as openvino_engine
from sdtrt.engine.openvino.engine import export_compiled


class _Compiled:
    """OpenVINO's export as the binding does it: writes, goes back to fill in a size, rewinds,
    and swallows what the stream raises."""

    def export_model(self, stream: io.BytesIO) -> None:
        try:
            stream.write(b"....payload")
            end = stream.tell()
            stream.seek(0)
            stream.write(b"SIZE")
            stream.seek(end)
            stream.write(b"-end")
            stream.seek(0)
        except OSError:
            pass


def test_the_compiled_model_goes_to_its_file_as_it_is_written(tmp_path):
    export_compiled(_Compiled(), "engine.blob", tmp_path)
    assert (tmp_path / "engine.blob").read_bytes() == b"SIZEpayload-end"


def test_a_failed_write_is_not_a_cut_blob(tmp_path, monkeypatch):
    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(openvino_engine, "open", lambda *args: Full(), raising=False)
    with pytest.raises(OSError, match="No space left"):
        export_compiled(_Compiled(), "engine.blob", tmp_path)
