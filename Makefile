# Two entry points: `make demo` (install, then run edge-server + device-client on the
# bundled model) and `make test` (install, then run the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

$(BIN)/edge-server: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: this exact pair installs from local wheels where they exist (no CUDA download)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/edge-server

demo: install
	PATH=$(BIN):$$PATH bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info
