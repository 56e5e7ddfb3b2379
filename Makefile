# Set-up and the two everyday jobs. `make demo` and `make test` each prepare .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installed before the project so that pip keeps this build; the export extra accepts torch >= 2.6.
TORCH ?= torch==2.13.0
TRT_STUBS := 10.13.0.35.1
PROMPT ?= a photo of an astronaut riding a horse on mars

.PHONY: install demo test test-onnxruntime-versions chromium typecheck test-slow test-gpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	# TensorRT's type stubs, for checking the GPU code: downloaded, not installed, since the
	# package depends on TensorRT itself (which installs only beside an NVIDIA GPU); .ci/typings.py
	# unpacks them.
	$(BIN)/pip download --quiet --no-deps --dest $(VENV)/stubs "tensorrt-stubs==$(TRT_STUBS)"
	$(BIN)/pip install --quiet -e ".[export,serve,ray,dev]"
	touch $@

# Build the tiny preset end to end and draw one image: demo/astronaut.png.
demo: install
	$(BIN)/sdtrt build tiny --output demo/tiny
	$(BIN)/sdtrt run demo/tiny "$(PROMPT)" --seed 0 --steps 25 --output demo/astronaut.png

test: typecheck test-onnxruntime-versions chromium
	$(BIN)/python -m pytest

# What depends on the installed onnxruntime (the fp16 graphs, the fused attention node, the CUDA
# fusions, the saved engines) also runs against
# the oldest onnxruntime sdtrt supports and the newest onnxruntime-gpu release, each unpacked
# beside the venv and put first on the path, with the one dependency of older releases that the
# venv lacks (coloredlogs, which their fusion tools import).
ORT_VERSIONS ?= 1.20.1 1.31.1
ORT_TESTS := tests/export/test_fp16.py tests/export/test_precision.py tests/export/test_attention.py \
	tests/engine/test_onnxruntime_backend.py tests/engine/test_onnxruntime_cuda.py \
	tests/export/test_cuda_fusions.py
test-onnxruntime-versions: install
	@for version in $(ORT_VERSIONS); do \
		target=$(VENV)/onnxruntime-$$version; \
		test -d $$target || $(BIN)/pip install --quiet --no-deps --target $$target \
			"onnxruntime==$$version" coloredlogs humanfriendly || exit 1; \
		echo "onnxruntime $$version:"; \
		PYTHONPATH=$$target EXPECT_ONNXRUNTIME_VERSION=$$version \
			$(BIN)/python -m pytest -q $(ORT_TESTS) || exit 1; \
	done

# Debian's chromium, for the headless-browser test of the web page: installed when missing and
# this is root on a Debian-like machine; elsewhere that test skips and says why.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "chromium could not be installed: the browser test will skip"; \
	else echo "chromium is missing and cannot be installed here: the browser test will skip"; fi

# mypy over the whole package, TensorRT and CUDA calls included (see .ci/typings.py).
typecheck: install
	$(BIN)/python .ci/typings.py
	$(BIN)/python -m mypy -p sdtrt

# Real-architecture checks (sd15 preset): many minutes and ~16 GB of memory.
test-slow: install
	$(BIN)/python -m pytest -m slow

# On a machine with an NVIDIA GPU and TensorRT (pip install -e '.[tensorrt]'): the GPU tests.
test-gpu: install
	$(BIN)/python -m pytest -m gpu -v

clean:
	rm -rf $(VENV) demo
