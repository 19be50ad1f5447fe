# pgm: `make demo` and `make test` are the two set-up commands on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default (lies on disk here); GPU users: make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q $(PYTEST_ARGS)

demo: install
	HF_HUB_OFFLINE=1 PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO_DIR)

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/run_all.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
