"""The torch references of `sdtrt bench --compare`, run in a process of their own.

On an H200, torch's eager fp16 UNet (SD 1.5, 512x512, batch 2) took 51 ms per call in the process
that held sdtrt's CUDA engines, and 26-33 ms in processes without them (alone, or beside a small
ONNX Runtime CUDA session); torch.compile took 29 ms there against 13 ms alone in an earlier run.
A reference is measured as its users run it, alone, so the parent asks and this process answers:
it times each call itself, with the parent's rounds still interleaving the contenders.

The exchange is one JSON object per line: the parent's requests on this process's stdin, its
answers on what was its stdout (anything the libraries print goes to stderr instead).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from sdtrt.bench.references import Clocked, TorchReference, TorchTarget
from sdtrt.bench.runner import BenchOptions
from sdtrt.engine.options import Precision
from sdtrt.errors import InputError, first_line

log = logging.getLogger(__name__)


class TorchProcess:
    """The parent's side: a child process holding diffusers' pipeline on `target`."""

    def __init__(
        self, folder: str, scheduler: str, target: TorchTarget, dropped: tuple[str, ...] = ()
    ) -> None:
        """`dropped`: modules diffusers loads without (see TorchReference)."""
        missing = [m for m in ("torch", "diffusers") if importlib.util.find_spec(m) is None]
        if missing:
            raise InputError(
                f"--compare runs diffusers in torch, and {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not installed here: "
                "pip install 'sdtrt[export]'"
            )
        self.target = target
        self._feeds = tempfile.TemporaryDirectory(prefix="sdtrt-bench-")
        self._child = subprocess.Popen(
            [sys.executable, "-m", "sdtrt.bench.torch_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._calls = 0
        try:
            self._ask(
                op="load",
                folder=folder,
                scheduler=scheduler,
                device=target.device,
                precision=target.precision.value,
                dropped=list(dropped),
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TorchProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._child.poll() is None:
            assert self._child.stdin is not None
            self._child.stdin.close()  # the child's loop ends with its input
            try:
                self._child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        self._feeds.cleanup()

    def _ask(self, tolerated: bool = False, **request: Any) -> dict[str, Any]:
        """Send one request and wait for its answer; an error answer raises unless `tolerated`."""
        assert self._child.stdin is not None and self._child.stdout is not None
        try:
            self._child.stdin.write(json.dumps(request) + "\n")
            self._child.stdin.flush()
            line = self._child.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise InputError(
                f"the torch reference process ended (exit {self._child.wait()}) during "
                f"'{request['op']}'; its messages are above"
            )
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer and not tolerated:
            if request["op"] == "load":
                raise InputError(
                    f"diffusers could not load {request['folder']} for --compare: {answer['error']}"
                )
            raise InputError(f"the torch reference failed ({request['op']}): {answer['error']}")
        return answer

    def _clocked(self, name: str) -> Clocked:
        return lambda: float(self._ask(op="time", name=name)["seconds"])

    def unet(self, feeds: dict[str, np.ndarray]) -> Clocked:
        """One eager UNet call on `feeds`."""
        name, _ = self._prepare_unet(feeds, compiled=False)
        return self._clocked(name)

    def compiled_unet(self, feeds: dict[str, np.ndarray]) -> Clocked | None:
        """torch.compile's UNet call on `feeds`, compiled now; None (the reason logged) where
        inductor cannot work here."""
        name, answer = self._prepare_unet(feeds, compiled=True)
        if "error" in answer:
            log.warning("torch.compile left out: %s", answer["error"])
            return None
        return self._clocked(name)

    def _prepare_unet(self, feeds: dict[str, np.ndarray], compiled: bool) -> tuple[str, dict]:
        self._calls += 1
        name = f"unet{self._calls}"
        folder = Path(self._feeds.name) / name
        folder.mkdir()
        for key, array in feeds.items():
            np.save(folder / f"{key}.npy", array)
        answer = self._ask(compiled, op="unet", name=name, feeds=str(folder), compiled=compiled)
        return name, answer

    def image(self, options: BenchOptions, height: int, width: int) -> Clocked:
        """One whole image through diffusers' pipeline."""
        self._ask(
            op="image", name="image", options=options.model_dump(), height=height, width=width
        )
        return self._clocked("image")


class _Child:
    """The child's side: diffusers' pipeline once loaded, and the calls prepared on it."""

    def __init__(self) -> None:
        self.reference: TorchReference | None = None
        self.calls: dict[str, Callable[[], object]] = {}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "load":
            target = TorchTarget(request["device"], Precision(request["precision"]))
            self.reference = TorchReference(
                request["folder"], request["scheduler"], target, tuple(request.get("dropped", ()))
            )
            return {}
        if op == "time":
            started = time.perf_counter()
            self.calls[request["name"]]()
            return {"seconds": time.perf_counter() - started}
        if self.reference is None:
            raise ValueError(f"'{op}' before 'load'")
        if op == "unet":
            folder = Path(request["feeds"])
            feeds = {path.stem: np.load(path) for path in folder.glob("*.npy")}
            call = self.reference.unet(feeds, compiled=request["compiled"])
            if request["compiled"]:
                call()  # inductor compiles on the first call, and fails there where it cannot
            self.calls[request["name"]] = call
            return {}
        if op == "image":
            options = BenchOptions.model_validate(request["options"])
            image = self.reference.image(options, request["height"], request["width"])
            self.calls[request["name"]] = image
            return {}
        raise ValueError(f"unknown request '{op}'")


def main() -> None:
    """Answer each request line until the parent closes the input."""
    answers: IO[str] = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the libraries print stays off the answers
    from sdtrt.export.quiet_libraries import quiet_torch_libraries

    quiet_torch_libraries()
    child = _Child()
    try:
        for line in sys.stdin:
            try:
                answer = child.answer(json.loads(line))
            except Exception as error:  # reported to the parent, which decides what it means
                answer = {"error": first_line(error)}
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
    except KeyboardInterrupt:  # Ctrl-C reaches both processes; the parent reports it
        pass


if __name__ == "__main__":
    main()
