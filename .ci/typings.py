"""Prepare .typings/ so that mypy checks every TensorRT and CUDA call in engine/.

- tensorrt-stubs ships .pyi files that Python cannot parse (a parameter named `in`, a parameter
  without default after defaulted ones); they are copied with those two things mended.
- cuda-bindings ships compiled modules without stubs; stubgen reads the names they export, so a
  misspelled CUDA call or enum fails the check.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / ".typings"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{name} is not installed; run `make install` first")
    return Path(next(iter(spec.submodule_search_locations)))


def _defaults_in_order(line: str) -> str:
    """Give a default to parameters that follow a defaulted one (invalid otherwise)."""
    match = re.match(r"(\s*def \w+\()(.*)(\)\s*(->.*)?:\s*)$", line)
    if not match:
        return line
    params, seen_default, out = match.group(2).split(", "), False, []
    for param in params:
        if "=" in param:
            seen_default = True
        elif seen_default and ":" in param and not param.startswith("*"):
            param += " = ..."
        out.append(param)
    return match.group(1) + ", ".join(out) + match.group(3)


def mend(text: str) -> str:
    text = re.sub(r"\bin: ", "in_: ", text)
    return "\n".join(_defaults_in_order(line) for line in text.split("\n"))


def main() -> None:
    shutil.rmtree(TARGET, ignore_errors=True)
    for package in ("tensorrt", "tensorrt_bindings"):
        source = _package_dir(package)
        for stub in source.glob("*.pyi"):
            target = TARGET / package / stub.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(mend(stub.read_text(encoding="utf-8")), encoding="utf-8")
    subprocess.run(
        [
            Path(sys.executable).with_name("stubgen"),
            "-q",
            "-m",
            "cuda.bindings.runtime",
            "-o",
            TARGET,
        ],
        check=True,
    )
    for package in ("cuda", "cuda/bindings"):
        (TARGET / package / "__init__.pyi").touch()


if __name__ == "__main__":
    main()
