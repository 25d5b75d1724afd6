# Two entry points: `make demo` (install, then run edge-server + device-client on the
# bundled model) and `make test` (install, then run the test suite; what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Torch comes from PyPI by default: on Linux x86-64 that is the CUDA build (torch +
# torchvision + the nvidia-* wheels, ~6 GB in the venv), which also runs on CPU. On a box
# without a GPU, take PyTorch's CPU-only wheels instead (~1 GB):
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
# torchvision must come from the same index as torch: compressai imports it, and a CUDA
# torchvision does not load next to a CPU torch.
TORCH ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: install datasets demo test check lint bench clean

$(BIN)/edge-server: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/edge-server

# Debian packages some tests use: the full Fashion-MNIST set (dataset-fashion-mnist) for
# the fmnist accuracy checks, prometheus for the dashboard test, which scrapes a real
# edge-server, and chromium for the browser SDK's end-to-end test (clients/web; its node
# packages come from the npm registry when the test builds it). Tests that need one say so
# when it is missing.
DEBS := dataset-fashion-mnist:$(FMNIST) prometheus:/usr/bin/prometheus chromium:/usr/bin/chromium
datasets:
	@missing=""; for dep in $(DEBS); do [ -e "$${dep#*:}" ] || missing="$$missing $${dep%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ]; then echo "note: apt-get install$$missing to run the tests that need them"; \
	  else $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	    || echo "note: could not install$$missing; the tests that need them will skip"; fi; \
	fi

demo: install
	PATH=$(BIN):$$PATH bash scripts/demo.sh

# Every test, on TEST_WORKERS processes (pytest-xdist; 1: in this process). A test file stays on one
# process (its module fixtures are built once); a summary of every skip with its reason at the end.
TEST_WORKERS ?= 2
test: install datasets
	$(BIN)/python -m pytest -rs --durations=15 $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# The fast set, for feedback while editing: in-process tests only (no edge-server or other
# process, no training run, no simulate run); `make test` runs everything.
check: install
	$(BIN)/python -m pytest -q -m "not slow and not e2e" --durations=10

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info
