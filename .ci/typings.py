"""Prepare .typings/ so that mypy checks every TensorRT and CUDA call in engine/.

- tensorrt-stubs ships .pyi files that Python cannot parse (a parameter named `in`, a parameter
  without default after defaulted ones); they are read from its wheel, which `make install`
  downloads into .venv/stubs (installing it would need TensorRT itself), and written with those
  two things mended.
- cuda-bindings ships compiled modules without stubs; stubgen reads the names they export, so a
  misspelled CUDA call or enum fails the check.
- `.typings/sdtrt` links back to the checkout, so that `mypy -p sdtrt` checks the package under
  its real name.
"""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / ".typings"
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")


def _tensorrt_stubs() -> dict[str, str]:
    """The .pyi files of the downloaded tensorrt-stubs wheel, by path inside the wheel."""
    wheels = sorted((Path(sys.prefix) / "stubs").glob("tensorrt_stubs-*.whl"))
    if not wheels:
        sys.exit(f"no tensorrt-stubs wheel in {Path(sys.prefix) / 'stubs'}; run `make install`")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return {
            # The wheel stores CRLF line ends, which the line-wise mending below must not see.
            name: wheel.read(name).decode("utf-8").replace("\r\n", "\n")
            for name in wheel.namelist()
            if name.endswith(".pyi") and name.split("/")[0] in STUB_PACKAGES
        }


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
    for name, text in _tensorrt_stubs().items():
        target = TARGET / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(mend(text), encoding="utf-8")
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
    # The package as `sdtrt`, whatever the checkout's folder is called: mypy then resolves every
    # `sdtrt.*` import to this source (an editable install's import hook is opaque to it, and
    # unresolved imports would silently type as Any).
    (TARGET / "sdtrt").symlink_to(Path(".."), target_is_directory=True)


if __name__ == "__main__":
    main()
