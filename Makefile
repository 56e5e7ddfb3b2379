# Set-up and the two everyday jobs. `make demo` and `make test` each prepare .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installed before the project so that pip keeps this build; the export extra accepts torch >= 2.1.
TORCH ?= torch==2.13.0
PROMPT ?= a photo of an astronaut riding a horse on mars

.PHONY: install demo test typecheck test-slow test-gpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	# CLIP's BPE merge list for real-vocabulary presets (sd15); the package's own
	# dependencies (torchvision, ...) are not needed for that file.
	$(BIN)/pip install --quiet --no-deps open-clip-torch
	# TensorRT's type stubs, for checking the GPU code; their dependency is TensorRT itself,
	# which only installs where there is an NVIDIA GPU.
	$(BIN)/pip install --quiet --no-deps tensorrt-stubs
	$(BIN)/pip install --quiet -e ".[export,dev]"
	touch $@

# Build the tiny preset end to end and draw one image: demo/astronaut.png.
demo: install
	$(BIN)/sdtrt build tiny --output demo/tiny
	$(BIN)/sdtrt run demo/tiny "$(PROMPT)" --seed 0 --steps 25 --output demo/astronaut.png

test: typecheck
	$(BIN)/python -m pytest

# mypy over the whole package, TensorRT and CUDA calls included (see .ci/typings.py).
typecheck: install
	$(BIN)/python .ci/typings.py
	$(BIN)/python -m mypy engine runtime export bench ui cli.py errors.py tolerances.py

# Real-architecture checks (sd15 preset): many minutes and ~16 GB of memory.
test-slow: install
	$(BIN)/python -m pytest -m slow

# On a machine with an NVIDIA GPU and TensorRT (pip install -e '.[tensorrt]'): the GPU tests.
test-gpu: install
	$(BIN)/python -m pytest -m gpu -v

clean:
	rm -rf $(VENV) demo
