# make setup: install everything into .venv/ (idempotent). make test: the whole suite.
# make serve: the app (MODEL_ID, default prompthero/openjourney-v4) and the Banana v4 gateway in front of it.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# requirements.txt's torch, its CPU build for this machine; on a CUDA machine install the CUDA build into .venv first,
# and it is kept.
TORCH := $(shell grep -E '^torch==' requirements.txt | cut -d' ' -f1)
# Banana's own SDKs, each in a folder of its own (both are the package banana_dev), for the client tests.
SDKS := 4.0.0 6.3.0
APP_PORT ?= 8000
GATEWAY_PORT ?= 8080

.PHONY: setup lint test fuzz mutants loadtest soak serve demo download bench bench-families bench-few-step bench-loras bench-previews bench-compile-cache bench-wheels coldstart economics clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt package.json package-lock.json Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	for v in $(SDKS); do $(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/sdk/banana-dev-$${v%%.*} banana-dev==$$v; done
	command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# ruff for the Python (pyproject.toml), hadolint for the Dockerfile: no Docker engine runs here to build it.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

# Two workers, each test file on one (its module's fixtures once): waits (timeouts, replicas dying, the soak) overlap
# with the CPU-bound tests, 17 minutes down to 12 on 2 cores.
test: setup lint
	$(PY) -m pytest -n 2 --dist loadfile

# The fuzz tests with 20x the cases of `make test`, on a fresh random seed each run.
fuzz: setup
	FUZZ_EXAMPLES=10000 HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_serving_fuzz.py tests/gateway/test_api_fuzz.py

# Each test that an input changes the image, run with the code path it guards broken (in float32, and in bf16 where
# the CPU has it): each must fail (testkit/mutants.py, bench/results/mutants.json).
mutants: setup
	$(PY) -m testkit.mutants

# 200 startOnly jobs, 20 clients, 2 replicas of the tiny model, Redis: every job exactly once; then 150 jobs through
# two gateways while a gateway, a replica and Redis are killed and restarted: each succeeds, none runs twice
# (bench/results/loadtest.json, chaos.json).
loadtest: setup
	$(PY) -m bench.loadtest
	$(PY) -m bench.chaos

# 2,000 requests to one replica, then 2,000 jobs through the gateway on Redis, all under ulimit -n 256: open files,
# memory and Redis must stay flat, no job lost or run twice (bench/results/soak.json, BENCHMARKS.md).
soak: setup
	$(PY) -m bench.soak

download: setup
	$(PY) download.py

# The app on APP_PORT, the gateway on GATEWAY_PORT (loopback; see docs/gateway.md to open it up with API keys).
serve: download
	trap 'kill 0' EXIT; \
	PORT=$(APP_PORT) HOST=127.0.0.1 $(PY) app.py & \
	$(PY) gateway.py --port $(GATEWAY_PORT) --backend http://127.0.0.1:$(APP_PORT)

# The whole path in a minute with no download: app, gateway and playground on a tiny model with RANDOM weights,
# built here. Every image it makes is noise; it shows that the parts work, not what a real model draws.
DEMO_MODEL := models/tiny-random-weights-demo
demo: setup
	test -f $(DEMO_MODEL)/model_index.json || $(PY) -m testkit.model_factory $(DEMO_MODEL)
	@echo "make demo: RANDOM weights, every image is noise. Playground: http://127.0.0.1:$(GATEWAY_PORT)/"
	$(MAKE) --no-print-directory serve MODEL_ID=$(abspath $(DEMO_MODEL))

# CPU benchmark: this app against plain diffusers, side by side (builds a 2 GB random SD-1.5 model once).
bench: setup
	$(PY) -m bench.cpu
	$(PY) bench/plot.py

# Model families: weights of each reference checkpoint, SD 3 and FLUX.1 on this CPU (bench/results/families.json).
bench-families: setup
	$(PY) -m bench.families

# Seconds per image at 4 steps against 25, and a weighted long prompt's cost (bench/results/few_step.json).
bench-few-step: setup
	$(PY) -m bench.few_step

# The wheels bench/gpu.sh carries to a lent GPU machine (Python 3.12, no network): what app.py and bench/gpu.py need
# beyond the machine's image (bench/gpu_image.txt), dependencies included (bench/wheels.py).
bench-wheels: setup
	$(PY) -m bench.wheels

# What a LoRA switch and a fused LoRA cost on this CPU, against plain diffusers' adapters (bench/results/loras.json).
bench-loras: setup
	$(PY) -m bench.loras

# Progress previews: their cost per image, TAESD against the VAE (bench/results/previews.json).
bench-previews: setup
	$(PY) -m bench.previews

# COMPILE=1's cold start from scratch and from its COMPILE_CACHE, against the default's (bench/results/compile_cache.json).
bench-compile-cache: setup
	$(PY) -m bench.compile_cache

# Zero to first image: no replica, a job, a scaler on GET /scale starts one (bench/results/cold_start.json).
coldstart: setup
	$(PY) -m bench.cold_start

# A month of the seed's traffic replayed against each way to run it: the bill, the waits, the defaults shipped
# (bench/results/economics.json; README's cost table and BENCHMARKS.md's come from it).
economics: setup
	$(PY) -m bench.economics

clean:
	rm -rf $(VENV) node_modules .pytest_cache
