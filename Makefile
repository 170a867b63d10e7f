# The commands of the README's quick start. Each does its own setup: a
# virtual environment in .venv with the package and its pinned dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-maskrcnn test install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,deploy]'
	touch $(STAMP)

install: $(STAMP)

# Trains a small PSPNet on the built-in Cityscapes-format sample and evaluates it.
demo: $(STAMP)
	$(PY) train.py

# Trains the Mask R-CNN detector on the built-in COCO-format sample and evaluates it from raw images.
demo-maskrcnn: $(STAMP)
	$(PY) train.py --model mask_rcnn --preset maskrcnn_demo

# The whole suite (slow-marked checks included), then one smoke run of the benchmark harness.
test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests
	$(PY) -m benchmarks --quick --json $(VENV)/benchmarks-quick.json

clean:
	rm -rf $(VENV) runs samples
