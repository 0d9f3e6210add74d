# tsdyn: `make train` runs the main job, `make test` runs the tests; both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# one thread per process: small-matrix torch work slows 10x when threads fight over 2 cores
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE WANDB_MODE=offline WANDB_SILENT=true
ARGS ?=

.PHONY: setup train test test-fast bench clean data report notebook slurm-up slurm-down

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
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist worksteal -q $(ARGS)

# the edit-test loop: unit tests and short runs, the end-to-end runs marked slow left out
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist worksteal -q -m "not slow and not slurm" $(ARGS)

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)  # active OpenMP waits: PASSIVE slows 2-thread small matmuls ~3x

# Fashion-MNIST from Debian's dataset-fashion-mnist package (`apt-get download` + `dpkg -x`: no root
# needed) into data/FashionMNIST/raw/, gzipped and unpacked (torchvision reads the unpacked files).
FMNIST_RAW := data/FashionMNIST/raw
data: $(FMNIST_RAW)/t10k-labels-idx1-ubyte

$(FMNIST_RAW)/t10k-labels-idx1-ubyte:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && apt-get download dataset-fashion-mnist) && \
	dpkg -x "$$tmp"/dataset-fashion-mnist_*.deb "$$tmp/pkg" && \
	mkdir -p $(FMNIST_RAW) && cp "$$tmp"/pkg/usr/share/datasets/fashion-mnist/*-ubyte.gz $(FMNIST_RAW)/ && \
	gunzip -kf $(FMNIST_RAW)/*-ubyte.gz

# figures and summary table of a run or multirun folder: make report RUN=outputs/multiruns/<date>/<time>
# (default: the newest run or multirun under outputs/); written to $(RUN)/report/; FIGURES=curves,width
# draws only those (FIGURES=none: the table alone); ARGS=--unfinished also counts runs still training
RUN ?=
FIGURES ?= all
report: $(STAMP)
	$(PY) -m tsdyn.report $(RUN) --figures $(FIGURES) $(ARGS)

# the example notebook, executed in place (outputs saved) with the venv's kernel against TSDYN_RUN
# (default: the newest run under outputs/runs): make notebook TSDYN_RUN=outputs/runs/<date>/<time>
NOTEBOOK ?= docs/examples/main_job.ipynb
notebook: $(STAMP)
	$(TEST_ENV) $(PY) -c "import nbformat, nbclient; nb = nbformat.read('$(NOTEBOOK)', as_version=4); \
	nbclient.NotebookClient(nb, kernel_name='python3', timeout=600).execute(); nbformat.write(nb, '$(NOTEBOOK)')"

# a private one-node SLURM cluster on this machine (root; installs Debian's slurmctld, slurmd,
# slurm-client and munge if missing), to try hydra/launcher=slurm: then `export SLURM_CONF=$(SLURM_DIR)/slurm.conf`
SLURM_DIR ?= /tmp/tsdyn-slurm
slurm-up: $(STAMP)
	$(PY) -m tests.slurm_cluster up $(SLURM_DIR)

slurm-down: $(STAMP)
	$(PY) -m tests.slurm_cluster down $(SLURM_DIR)

clean:
	rm -rf outputs multirun .pytest_cache
