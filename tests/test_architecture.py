"""The package's structure holds: imports run down the floors of docs/architecture.md, backends
are named only by the registry and their own packages, and modules stay readable in one sitting.
Read from the source with `ast`, so that a change which breaks the structure fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {".venv", ".git", ".ci", "tests", ".typings", "docs", "demo", "node_modules"}
# The floor of each top-level part of the package: an import may only go to a lower floor, or
# stay within its own part. runtime/ and export/ share a floor and never import each other.
FLOORS = {
    "errors": 0,
    "__init__": 0,
    "engine": 1,
    "tolerances": 2,
    "runtime": 3,
    "export": 3,
    "serve": 4,
    "bench": 4,
    "debug": 4,
    "cli": 5,
}
ALLOWED_SAME_FLOOR = {("bench", "export")}  # the benchmark's torch reference, a peer process
BACKEND_PACKAGES = ("engine/onnxruntime/", "engine/openvino/", "engine/tensorrt/")
REGISTRY = ("engine/backends.py", "engine/auto.py")
BACKEND_CLASSES = {
    "OnnxRuntimeBackend",
    "OnnxRuntimeCudaBackend",
    "OpenVinoBackend",
    "OpenVinoGpuBackend",
    "OpenVinoNpuBackend",
    "TensorRtBackend",
}
# Backend names that are not also a library's (package) name, which the doctor and the
# benchmark's peers may spell.
BACKEND_NAMES = {"onnxruntime-cuda", "openvino-gpu", "openvino-npu"}
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(
        path for path in ROOT.rglob("*.py") if not set(path.relative_to(ROOT).parts) & SKIPPED
    )


def _part(name: str) -> str:
    """The top-level part of `sdtrt.x.y` ("x"), or "__init__" for `sdtrt` itself."""
    pieces = name.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [name for name in names if name == "sdtrt" or name.startswith("sdtrt.")]


def test_every_module_belongs_to_a_floor():
    parts = {path.relative_to(ROOT).parts[0].removesuffix(".py") for path in _modules()}
    assert parts <= set(FLOORS), parts - set(FLOORS)


def test_imports_run_down_the_floors():
    wrong = []
    for path in _modules():
        own = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for name in _imports(path):
            target = _part(name)
            if target == own or (own, target) in ALLOWED_SAME_FLOOR:
                continue
            if FLOORS[target] >= FLOORS[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong


def test_only_the_registry_and_the_backends_name_backends():
    named = []
    for path in _modules():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(BACKEND_PACKAGES) or relative in REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name | ast.alias | ast.Attribute):
                spelled = getattr(node, "id", None) or getattr(node, "name", None)
                spelled = spelled or getattr(node, "attr", None)
                if spelled in BACKEND_CLASSES:
                    named.append(f"{relative}: {spelled}")
            elif isinstance(node, ast.Constant) and node.value in BACKEND_NAMES:
                named.append(f"{relative}: {node.value!r}")
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module
                and any(
                    node.module.startswith("sdtrt." + package.rstrip("/").replace("/", "."))
                    for package in BACKEND_PACKAGES
                )
            ):
                # A library's adapter (importing it on demand, quieting its logger) serves the
                # tools that run graphs on that library too; its backends, only the registry.
                if not node.module.endswith(".library"):
                    named.append(f"{relative}: imports {node.module}")
    assert not named, named


def test_the_wheel_carries_every_package():
    """pyproject.toml lists the packages by hand (the repository root is the package): a folder
    of modules missing from the list would be missing from the installed sdtrt."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {path.parent.relative_to(ROOT) for path in _modules()}
    needed = {".".join(["sdtrt", *folder.parts]) for folder in folders}
    assert needed <= listed, needed - listed


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_modules_are_read_in_one_sitting(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{lines} lines"
