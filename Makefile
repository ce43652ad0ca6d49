# make setup: install everything into .venv/ (idempotent). make test: the whole suite. make serve: run the template.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# PyTorch's CPU build for this machine; a CUDA machine already has its torch, or install the CUDA build yourself.
TORCH := torch==2.13.0

.PHONY: setup test serve download clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest

download: setup
	$(PY) download.py

serve: download
	$(PY) app.py

clean:
	rm -rf $(VENV) .pytest_cache
