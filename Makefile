# Set-up and the two everyday jobs. `make demo` and `make test` each prepare .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installed before the project so that pip keeps this build; the export extra accepts torch >= 2.1.
TORCH ?= torch==2.13.0
PROMPT ?= a photo of an astronaut riding a horse on mars

.PHONY: install demo test test-slow clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	# CLIP's BPE merge list for real-vocabulary presets (sd15); the package's own
	# dependencies (torchvision, ...) are not needed for that file.
	$(BIN)/pip install --quiet --no-deps open-clip-torch
	$(BIN)/pip install --quiet -e ".[export,dev]"
	touch $@

# Build the tiny preset end to end and draw one image: demo/astronaut.png.
demo: install
	$(BIN)/sdtrt build tiny --output demo/tiny
	$(BIN)/sdtrt run demo/tiny "$(PROMPT)" --seed 0 --steps 25 --output demo/astronaut.png

test: install
	$(BIN)/python -m pytest

# Real-architecture checks (sd15 preset): many minutes and ~16 GB of memory.
test-slow: install
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) demo
