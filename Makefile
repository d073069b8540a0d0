# medfed: two commands from a fresh clone.
#   make run    set up .venv, generate phantoms if no data is configured, run the demo study
#   make test   set up .venv, run the fast test suite (without the federation tests)
#   make test-federation   the fast tests that start real federations (Ray, SuperLink) or
#                          medfed subprocesses (marker `federation`)
#   make test-docker   a Docker engine (deploy/engine.sh, as root), the base image without a
#                      registry (deploy/base-image.sh), then the compose federation's tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first when none is present (a CPU build by default); override e.g.
#   make run TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
STUDY ?= simulations/studies/demo.toml
OUT ?= runs/demo
PYTEST_ARGS ?=
# the fast tier: `make test` runs it less the federation tests, `make test-federation` runs those
FAST_TIER := not slow and not gpu and not docker
# base image of deploy/Dockerfile made from Debian packages by deploy/base-image.sh
DOCKER_BASE_IMAGE ?= medfed-base:bookworm
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup run test test-federation test-slow test-docker docker-engine lint format bench clean

setup: $(VENV)/.medfed-installed

$(VENV)/.medfed-installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC)"; $(PY) -m pip install -q $(TORCH_SPEC); }
	$(PY) -m pip install -q -e ".[dev]"
	@# NIH ChestX-ray14's real metadata (the CSV torchxrayvision ships) for the phantoms;
	@# --no-deps: medfed only reads that file, and torchvision would bring its own torch
	$(PY) -m pip install -q --no-deps "torchxrayvision>=1.2"
	@touch $@

run: setup
	$(VENV)/bin/medfed run $(STUDY) --out $(OUT)

test: setup
	$(PY) -m pytest -m '$(FAST_TIER) and not federation' $(PYTEST_ARGS)

test-federation: setup
	$(PY) -m pytest -m 'federation and $(FAST_TIER)' $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

docker-engine:
	bash deploy/engine.sh --compose-v2
	bash deploy/base-image.sh --tag $(DOCKER_BASE_IMAGE)

test-docker: setup docker-engine
	MEDFED_REQUIRE_DOCKER=1 MEDFED_BASE_IMAGE=$(DOCKER_BASE_IMAGE) \
	  $(PY) -m pytest -m docker tests/test_docker.py $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(VENV)/bin/medfed bench all

clean:
	rm -rf runs .pytest_cache .ruff_cache
