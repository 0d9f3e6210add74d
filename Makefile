# tsdyn: `make train` runs the main job, `make test` runs the tests; both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# one thread per process: small-matrix torch work slows 10x when threads fight over 2 cores
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE WANDB_MODE=offline WANDB_SILENT=true
ARGS ?=

.PHONY: setup train test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first: this machine's local wheels (a CUDA build that also runs on the CPU)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m tsdyn.train $(ARGS)

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n 2 -q $(ARGS)

bench: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) scripts/bench.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
